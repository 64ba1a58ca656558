"""Stop signals: SIGINT, SIGTERM and SIGUSR2 become a flag the synthesis loop checks."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGUSR2 arrived during the run; the state was checkpointed."""

    def __init__(self, signum: int, step: int = -1):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class NotStarted(Interrupted):
    """A stop signal arrived after the job was set up and before its synthesis ran: it never
    took a step (a launcher hands it this instead of starting its batch)."""

    def __init__(self, signum: int):
        name = signal.Signals(signum).name
        Exception.__init__(self, f"stopped by {name} before its first step")
        self.signum = signum


# SIGUSR2: the warning SLURM sends (through submitit's `--signal=USR2@<signal_delay_s>`) before
# a job's time limit; absent on Windows.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR2") if hasattr(signal, name)
)


GRACE_S = 2.0  # a repeat of the first signal within this time is a duplicate, not a second press
_open_blocks: list[list[int]] = []  # the `received` lists of the open stop_on_signals blocks
_first_at: list[float] = []  # when the first stop signal arrived (while any block is open)
_previous: dict[int, Any] = {}  # the handlers before the first block opened


def repeats_force_stop() -> bool:
    """Whether a late repeat of the stop signal stops at once: only where a person may press
    Ctrl-C again. In a submitit job (SLURM) a repeat is the scheduler's signal again, and the
    checkpoint under way must not be cut short."""
    return not os.environ.get("SUBMITIT_EXECUTOR")


def _handler(signum: int, frame: Any) -> None:
    if not _first_at:
        _first_at.append(time.monotonic())
    elif (
        repeats_force_stop()
        and _open_blocks
        and _open_blocks[-1]
        and signum == _open_blocks[-1][0]
        and time.monotonic() - _first_at[0] >= GRACE_S
    ):
        raise KeyboardInterrupt
    for block in _open_blocks:
        if not block:
            block.append(signum)


@contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM/SIGUSR2 into a flag the loop checks between steps (restored afterwards).

    The list yielded holds the first signal received. A repeat of that signal more than
    `GRACE_S` after it (Ctrl-C pressed again) stops at once with KeyboardInterrupt; one sooner
    (the same Ctrl-C forwarded by a wrapper or to the whole process group) and a different
    signal (SLURM's TERM after its USR2) do not interrupt the checkpoint under way, and in a
    submitit job no repeat does (`repeats_force_stop`). Blocks nest
    (a sweep around its jobs) and may close in any order (the jobs of a batch): a signal reaches
    every open block, and a block opened after a signal starts with it (the job stops at its
    first step). The handlers before the first block are restored when the last one closes.
    """
    received: list[int] = list(_open_blocks[-1]) if _open_blocks else []
    if not _open_blocks:
        for signum in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                _previous[signum] = signal.signal(signum, _handler)
    _open_blocks.append(received)
    try:
        yield received
    finally:
        position = next(i for i, block in enumerate(_open_blocks) if block is received)
        del _open_blocks[position]
        if not _open_blocks:
            _first_at.clear()
            for signum, old in _previous.items():
                signal.signal(signum, old)
            _previous.clear()
