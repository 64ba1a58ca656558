"""Reads back what W&B has written to a run's `.wandb` file, to know it is on disk.

The file is W&B's transaction log: a 7-byte header, then LevelDB-log records (32 KiB blocks,
each chunk a 7-byte header: CRC, little-endian length, type) holding `wandb_internal.Record`
protobufs. Only complete records are read; a partly written tail is read again next time.
"""

from __future__ import annotations

from pathlib import Path

HEADER_LEN = 7  # b":W&B", a 2-byte magic, a version byte
BLOCK_LEN = 32 * 1024
CHUNK_HEADER_LEN = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class RunFileReader:
    """Follows one `.wandb` file as W&B appends to it: the last history step and the exit record."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = HEADER_LEN
        self.last_step: int | None = None
        self.exited = False

    def update(self) -> None:
        """Read the records completed since the last call."""
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                data = file.read()
        except OSError:
            return
        done = 0
        for payload, end in self._records(data):
            self._note(payload)
            done = end
        self.offset += done

    def _records(self, data: bytes):
        """Yield (record bytes, end offset in `data`) for every complete record in `data`."""
        pos = 0
        chunks: list[bytes] = []
        while True:
            left = BLOCK_LEN - (self.offset + pos) % BLOCK_LEN
            if left < CHUNK_HEADER_LEN:  # the block's zero padding
                pos += left
                continue
            if pos + CHUNK_HEADER_LEN > len(data):
                return
            length = int.from_bytes(data[pos + 4 : pos + 6], "little")
            kind = data[pos + 6]
            end = pos + CHUNK_HEADER_LEN + length
            if kind == 0 or end > len(data):
                return
            chunk = data[pos + CHUNK_HEADER_LEN : end]
            chunks = [chunk] if kind in (FULL, FIRST) else [*chunks, chunk]
            pos = end
            if kind in (FULL, LAST):
                yield b"".join(chunks), pos

    def _note(self, payload: bytes) -> None:
        from wandb.proto import wandb_internal_pb2 as pb

        record = pb.Record()  # type: ignore[attr-defined]  # wandb picks this module at run time
        try:
            record.ParseFromString(payload)
        except Exception:  # a record this wandb cannot parse: nothing we look for
            return
        kind = record.WhichOneof("record_type")
        if kind == "history":
            step = record.history.step.num
            self.last_step = step if self.last_step is None else max(self.last_step, step)
        elif kind == "exit":
            self.exited = True
