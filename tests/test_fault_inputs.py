"""Fault injection: bad values, hostile files, unwritable or full disks, missing resources.

Every case ends in exit 0 with complete outputs, or exit 1 with one error line (no traceback)
and, wherever the disk allows it, a summary.json that says the run failed and why.
Full- and read-only-disk cases mount a small tmpfs (root only); they skip elsewhere, except
under the CI environment variable, where they fail.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylelab import resources
from stylelab.config import Config, LayersConfig, PairConfig, validate
from stylelab.engine.images import open_image, resize_long_side
from stylelab.engine.masks import load_mask
from stylelab.engine.objective import normalised_blend
from stylelab.engine.sources import download
from stylelab.errors import ImageError, StyleLabError
from stylelab.preflight import unreadable_override
from tests.conftest import FAST, run_cli, start_cli

pytestmark = pytest.mark.slow
SUMMARY = "summary.json"


# --- helpers ------------------------------------------------------------------------------------


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "[ERROR]" in line]


def assert_one_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 1, no traceback, exactly one error line holding every fragment; returns the line."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_failed_summary(run_dir: Path, *fragments: str) -> dict:
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["status"] == "failed", summary
    for fragment in fragments:
        assert fragment in summary["error"], summary
    return summary


def run_in(tmp_path: Path, *overrides: str, **kwargs) -> tuple[subprocess.CompletedProcess, Path]:
    """A run whose folder is `tmp_path/run`."""
    run_dir = tmp_path / "run"
    return run_cli(*overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path, **kwargs), run_dir


def png(path: Path, side: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def png_bomb(path: Path, side: int = 100_000) -> Path:
    """A valid ~1.2 MB PNG of side x side black 1-bit pixels (10 GB once decoded at this size)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = 1000
    block = bytes(side // 8 + 1) * rows  # filter byte + packed row, all zero
    compressor = zlib.compressobj(9)
    head = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    unit = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)  # repeats exactly
    adler = (((len(block) * (side // rows)) % 65521) << 16) | 1  # Adler-32 of zeros
    data = head + unit * (side // rows - 1) + b"\x03\x00" + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at `mount_point` (root only): skips where mounting is refused, unless CI."""
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the filesystem of `folder` until a write fails, then free `leave` bytes."""
    ballast = folder / ".ballast"
    if leave:
        ballast.write_bytes(b"\xff" * leave)
    with (folder / ".filler").open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\xff" * 4096)
    ballast.unlink(missing_ok=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def no_tmp_files(root: Path) -> None:
    left = [path for path in root.rglob("*.tmp")]
    assert not left, left


# --- 8, 9, 10: bad settings end in one line and a true summary.json ------------------------------

LONG_PROJECT = "p" * 200
BAD_SETTINGS = [
    (["layers.style=[2,7]", "layers.style_weights=[1]"], ["1 value(s) for 2 layer(s)"]),
    (["logger=wandb", "logger.mode=onlin"], ["logger.mode=onlin", "offline"]),
    (["logger=wandb", "logger.project='a/b?c'"], ["logger.project=a/b?c", "found / ?"]),
    (["logger=wandb", f"logger.project={LONG_PROJECT}"], ["1 to 128 characters", "has 200"]),
    (["layers.style_weights=[-1,1,1,1,1]"], ["layers.style_weights=", "must be >= 0"]),
    (["style_weight=inf"], ["style_weight=inf: must be >= 0 and finite"]),
    (["layers.content_weights=[nan,1]"], ["layers.content_weights=[nan, 1.0]", "finite"]),
    (["layers.style=[2,2,7]"], ["conv1_2 (index 2) is listed twice"]),
    (["image_size=100000"], ["image_size=100000", "16384"]),
]


@pytest.mark.parametrize(("overrides", "fragments"), BAD_SETTINGS, ids=lambda v: str(v)[:40])
def test_bad_settings_end_in_one_line_and_a_failed_summary(
    tmp_path: Path, overrides: list[str], fragments: list[str]
) -> None:
    result, run_dir = run_in(tmp_path, *FAST, "steps=2", *overrides)
    line = assert_one_line(result, *fragments)
    assert_failed_summary(run_dir, *fragments)
    assert line.endswith(json.loads((run_dir / SUMMARY).read_text())["error"])
    assert not (run_dir / "final.png").exists()


def test_errors_before_the_run_still_give_the_per_job_list_in_a_multirun(tmp_path: Path) -> None:
    result = run_cli(
        *FAST, "logger=wandb", "steps=2", "logger.mode=onlin,offline", cwd=tmp_path, multirun=True
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "job 0: failed: logger.mode=onlin" in result.stderr
    assert "job 1: finished" in result.stderr
    (job0,) = tmp_path.glob("multirun/*/*/0")
    assert_failed_summary(job0, "logger.mode=onlin")


def test_config_checks_cover_every_weight_and_the_logger() -> None:
    """In-process: the checks themselves, without a CLI round trip."""
    layers = LayersConfig(name="x", style=[0, 5], content=[21], style_weights=[1.0, 2.0])
    good = Config(pair=PairConfig(name="p", content="c", style="s"), layers=layers)
    validate(good)
    for change, fragment in [
        ({"tv_weight": float("nan")}, "tv_weight=nan"),
        ({"content_weight": -0.5}, "content_weight=-0.5"),
        ({"max_input_pixels": 0}, "max_input_pixels=0"),
        ({"style_size": 100_000}, "style_size=100000"),
    ]:
        bad = Config(**{**good.__dict__, **change})
        with pytest.raises(StyleLabError, match=fragment):
            validate(bad)
    good.logger.tags = ["t" * 65]
    with pytest.raises(StyleLabError, match="64 characters"):
        validate(good)


def test_a_file_named_wandb_in_the_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "wandb").write_text("not a folder")
    result, _ = run_in(tmp_path, *FAST, "steps=2", "logger=wandb")
    assert_one_line(result, "wandb is a file", "move or delete")
    assert_failed_summary(run_dir, "wandb is a file")


# --- unwritable and full disks ------------------------------------------------------------------


def test_run_folder_on_a_filesystem_that_does_not_exist(tmp_path: Path) -> None:
    result = run_cli(*FAST, "steps=2", "hydra.run.dir=/proc/stylelab-nowhere/run", cwd=tmp_path)
    assert_one_line(result, "/proc/stylelab-nowhere", "hydra.run.dir")


def test_run_folder_on_a_read_only_filesystem(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mount:
        result = run_cli(*FAST, "steps=2", f"hydra.run.dir={mount}/run", cwd=tmp_path)
    assert_one_line(result, "Read-only file system", "hydra.run.dir")


def test_sweep_folder_on_a_read_only_filesystem(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mount:
        result = run_cli(
            *FAST, "steps=2", "seed=0,1", f"hydra.sweep.dir={mount}/sweep", cwd=tmp_path,
            multirun=True,
        )  # fmt: skip
    assert_one_line(result, "Read-only file system", "hydra.sweep.dir")


def test_full_disk_at_start(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "1m") as mount:
        fill(mount)
        result = run_cli(*FAST, "steps=2", f"hydra.run.dir={mount}/run", cwd=tmp_path)
        no_tmp_files(mount)
    assert_one_line(result, "No space left on device", "free some space")


def _full_disk_mid_run(tmp_path: Path, mount: Path, interrupt: bool) -> tuple[str, Path]:
    """Start a long run on `mount` and fill the disk once it is going.

    Without `interrupt`, every step writes a frame and the next frame finds the disk full.
    With it, the run writes nothing until Ctrl-C: the disk keeps room for the loss rows but
    not for the checkpoint (at 64 px, the image alone is 48 KiB, plus the L-BFGS history).
    """
    run_dir = mount / "run"
    if interrupt:
        logging_overrides, leave = ["log.image_every=100000", "log.flush_every=100000"], 65536
        going = run_dir / "frames" / "step_000000.png"
    else:
        logging_overrides, leave = ["log.image_every=1", "log.flush_every=2"], 8192
        going = run_dir / "losses.jsonl"
    process = start_cli(
        *FAST, "image_size=64", "steps=100000", *logging_overrides,
        f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_for(going, process)
        fill(mount, leave=leave)
        if interrupt:
            process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    result = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
    return assert_one_line(result, "No space left on device", "free some space"), run_dir


def assert_earlier_outputs_intact(run_dir: Path) -> None:
    assert Image.open(run_dir / "content.png").size == (64, 64)
    rows = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    assert rows and rows[0]["step"] == 0


def test_full_disk_mid_run(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "4m") as mount:
        _, run_dir = _full_disk_mid_run(tmp_path, mount, interrupt=False)
        no_tmp_files(mount)
        assert_failed_summary(run_dir, "No space left on device")
        assert_earlier_outputs_intact(run_dir)


def test_full_disk_during_the_checkpoint_on_ctrl_c(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "4m") as mount:
        line, run_dir = _full_disk_mid_run(tmp_path, mount, interrupt=True)
        assert "checkpoint.pt.tmp" in line
        no_tmp_files(mount)
        assert not (run_dir / "checkpoint.pt").exists()
        assert_failed_summary(run_dir, "No space left on device")
        assert_earlier_outputs_intact(run_dir)


def test_save_checkpoint_turns_torchs_full_disk_error_into_enospc(
    tmp_path: Path, monkeypatch
) -> None:
    from stylelab import outputs

    folder = outputs.RunFolder(tmp_path)
    earlier = {"synthesis": {"step": 1}}
    folder.save_checkpoint(earlier)

    def full_disk(state, file) -> None:
        file.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(outputs.torch, "save", full_disk)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda _: type("U", (), {"free": 0})())
    with pytest.raises(OSError) as raised:
        folder.save_checkpoint({"synthesis": {"step": 2}})
    assert raised.value.errno == errno.ENOSPC
    assert folder.load_checkpoint() == earlier
    assert not list(tmp_path.glob("*.tmp"))


def test_loss_rows_are_not_left_half_written_on_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    from stylelab import outputs

    folder = outputs.RunFolder(tmp_path)
    folder.append_losses([{"step": 0, "total": 1.0}])

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full_disk)
    with pytest.raises(OSError):
        folder.append_losses([{"step": 1, "total": 0.5}, {"step": 2, "total": 0.25}])
    assert folder.read_losses() == [{"step": 0, "total": 1.0}]


# --- hostile or odd input files ------------------------------------------------------------------


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 2_000_000
    result, run_dir = run_in(tmp_path, *FAST, "steps=2", f"pair.content={bomb}", timeout=120)
    assert_one_line(result, "100000x100000", "max_input_pixels")
    assert_failed_summary(run_dir, "decompression bomb")


def test_the_pixel_limit_is_a_config_key(tmp_path: Path) -> None:
    small = png(tmp_path / "small.png")
    result, run_dir = run_in(
        tmp_path, *FAST, "steps=2", f"pair.content={small}", "max_input_pixels=1000"
    )
    assert_failed_summary(run_dir, "max_input_pixels")
    assert_one_line(result, "64x64", "over the limit of 1000")
    with pytest.raises(ImageError, match="over the limit of 4095"):
        open_image(small, max_pixels=4095)
    assert open_image(small, max_pixels=4096).size == (64, 64)


def test_image_size_beyond_memory_is_refused_before_the_run(tmp_path: Path) -> None:
    small = png(tmp_path / "small.png")
    result, run_dir = run_in(
        tmp_path, *FAST, "steps=2", "image_size=8000", "style_size=32",
        f"pair.content={small}", f"pair.style={small}", timeout=240,
    )  # fmt: skip
    assert_one_line(result, "not enough memory on cpu for image_size=8000", "GiB free")
    assert_failed_summary(run_dir, "not enough memory")


def test_the_memory_check_comes_before_any_image_is_made_at_that_size(
    tmp_path: Path, monkeypatch
) -> None:
    """A run too large for memory is refused from its images' sizes alone: no image at
    image_size (8000x8000 px, 768 MB as float32) is ever made, nor the VGG run on one."""
    from stylelab import factory, runner
    from stylelab.tracking import NullTracker, RunInfo
    from tests.test_robustness import tiny_config

    made: list[tuple[int, ...]] = []
    to_tensor = factory.pil_to_tensor
    monkeypatch.setattr(
        factory, "pil_to_tensor", lambda image: made.append(image.size) or to_tensor(image)
    )
    cfg = tiny_config(image_size=8000, style_size=32)
    with pytest.raises(StyleLabError, match="not enough memory on cpu for image_size=8000"):
        runner.run_synthesis(cfg, tmp_path, NullTracker(), RunInfo({}, tmp_path, "big"))
    assert not [size for size in made if max(size) > 32], made  # at most the 32 px style


def test_memory_check_reads_meminfo(tmp_path: Path, monkeypatch) -> None:
    import torch

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable:    1048576 kB\n")
    monkeypatch.setattr(resources, "MEMINFO", meminfo)
    cpu = torch.device("cpu")
    assert resources.available_memory_bytes(cpu) == 2**30
    cfg = Config(image_size=1024)
    resources.check_memory(cfg, cpu, 64 * 64)
    with pytest.raises(StyleLabError, match=r"needs roughly \d+\.\d GiB, 1\.0 GiB free"):
        resources.check_memory(cfg, cpu, 1024 * 1024)


def test_permission_error_is_not_called_corrupt(tmp_path: Path, monkeypatch) -> None:
    path = png(tmp_path / "locked.png")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageError) as raised:
        open_image(path)
    assert "permission denied" in str(raised.value) and "corrupt" not in str(raised.value)


def test_fifo_is_not_called_empty(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError) as raised:
        open_image(fifo)
    assert "not a regular file" in str(raised.value) and "0 bytes" not in str(raised.value)


def test_big_upscale_warns(caplog) -> None:
    tiny = Image.new("RGB", (1, 1), (10, 20, 30))
    with caplog.at_level(logging.WARNING, logger="stylelab.engine.images"):
        assert resize_long_side(tiny, 32).size == (32, 32)
        assert resize_long_side(Image.new("RGB", (10, 10)), 40).size == (40, 40)  # 4x: quiet
    assert [record.getMessage() for record in caplog.records] == [
        "upscaling a 1x1 input 32x to 32x32: the result will be blurry; "
        "use a larger image or a smaller image_size/style_size"
    ]


def test_path_with_spaces_and_accents_gets_a_quoting_hint(tmp_path: Path) -> None:
    folder = tmp_path / "mes photos é"
    folder.mkdir()
    photo = png(folder / "a b.png")
    result = run_cli(*FAST, "steps=2", f"pair.content={photo}", cwd=tmp_path)
    assert_one_line(result, "cannot read the override", "'pair.content=\"/my photos/a.jpg\"'")
    assert "LexerNoViableAltException" not in result.stderr
    assert unreadable_override("pair.content=/plain/path.png") is None
    assert unreadable_override(f"pair.content='{photo}'") is None
    assert unreadable_override("layers.style=[2,7") is None  # Hydra's own message is better


def test_slurm_without_gpus_says_to_set_gpus_per_node_zero(monkeypatch) -> None:
    from hydra.errors import CompactHydraException
    from submitit.core.utils import FailedJobError

    from hydra_plugins.stylelab_launchers.submitit_launchers import SlurmLauncher

    def refused(self, job_overrides, initial_job_idx):
        raise FailedJobError(
            "sbatch: error: Invalid generic resource (gres) specification\n"
            "subprocess.CalledProcessError: Command '['sbatch', '/tmp/x.sh']' returned 1."
        )

    # where SlurmLauncher submits (Hydra's plugin scan may import its own copy of the class)
    base = next(c for c in SlurmLauncher.__mro__ if c.__name__ == "WaitForEveryJob")
    monkeypatch.setattr(base, "launch", refused)
    launcher = SlurmLauncher(gpus_per_node=1, setup=None)
    with pytest.raises(CompactHydraException) as raised:
        launcher.launch([["seed=0"]], 0)
    message = str(raised.value)
    assert "hydra.launcher.gpus_per_node=0" in message and "\n" not in message
    assert launcher.params["setup"] is None


# --- a seeded sweep over random combinations -----------------------------------------------------

VALID = [
    "style_weight=1e4",
    "tv_weight=0",
    "optim=adam",
    "layers=gatys",
    "layers.style_weights=[1,0.5,0.25,0.125,0]",
    "init=noise",
    "model.pooling=avg",
]
INVALID = [
    "layers.style_weights=[1]",
    "style_weight=-inf",
    "content_weight=nan",
    "optim.lr=0",
    "layers.content=[conv4_2,conv4_2]",
    "image_size=20000",
    "logger.mode=onlin",
    "max_input_pixels=-1",
]


def test_random_combinations_either_finish_or_fail_in_one_line(tmp_path: Path) -> None:
    # Six runs, each with 1 to 3 valid overrides and every other one with an invalid one too:
    # with this seed, every valid override is drawn at least once, 3 invalid ones in all.
    rng, drawn = random.Random(2), set()
    for attempt in range(6):
        overrides = rng.sample(VALID, rng.randint(1, 3))
        drawn.update(overrides)
        if attempt % 2:
            overrides.append(rng.choice(INVALID))
        cwd = tmp_path / str(attempt)
        cwd.mkdir()
        result, run_dir = run_in(cwd, *FAST, "steps=2", "logger=wandb", *overrides)
        context = f"{overrides}\n{result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr, context
        summary = json.loads((run_dir / SUMMARY).read_text())
        if result.returncode == 0:
            assert summary["status"] == "finished", context
            for name in ("final.png", "synthesis.gif", "losses.jsonl", "checkpoint.pt"):
                assert (run_dir / name).exists(), (name, context)
        else:
            assert result.returncode == 1, context
            lines = error_lines(result)
            assert len(lines) == 1 and summary["status"] == "failed", context
            assert lines[0].endswith(summary["error"]), context
    assert drawn == set(VALID)


# --- issue 26: values of the wrong type or out of range, refused up front ------------------------


def pair_config(**changes) -> Config:
    """A valid in-process config (two styles), with `changes` applied to its fields."""
    layers = LayersConfig(name="x", style=[0, 5], content=[21])
    cfg = Config(pair=PairConfig(name="p", content="c", style=["s", "t"]), layers=layers)
    for key, value in changes.items():
        node, _, name = key.rpartition(".")
        setattr(getattr(cfg, node) if node else cfg, name, value)
    return cfg


@pytest.mark.parametrize("blend", [[math.inf, 1.0], [math.nan, 1.0], [-1.0, 2.0], [0.0, 0.0]])
def test_blend_weights_must_be_finite_and_positive(blend: list[float]) -> None:
    with pytest.raises(StyleLabError, match=r"pair\.style_blend=.*finite, >= 0 and not all 0"):
        validate(pair_config(**{"pair.style_blend": blend}))


def test_huge_blend_weights_normalise_without_overflow() -> None:
    assert normalised_blend([1e308, 1e308], 2) == [0.5, 0.5]
    assert normalised_blend([3e307, 1e308], 2) == pytest.approx([3 / 13, 10 / 13])
    with pytest.raises(ValueError, match="finite"):
        normalised_blend([math.inf, 1.0], 2)


PYRAMID = {"schedule.name": "pyramid", "image_size": 48}
BAD_SCHEDULES = [
    ({**PYRAMID, "schedule.steps": "12"}, "schedule.steps='12': give a whole number"),
    ({**PYRAMID, "schedule.steps": "abc"}, "schedule.steps='abc': give a whole number"),
    ({**PYRAMID, "schedule.steps": [1.5, 2]}, r"schedule.steps=\[1.5, 2\]: give a whole number"),
    ({**PYRAMID, "schedule.steps": [True, 2]}, "schedule.steps=.*: give a whole number"),
    ({**PYRAMID, "schedule.sizes": [32, 32, 48]}, "each larger than the one before"),
    (
        {**PYRAMID, "schedule.sizes": [1.5, 48]},
        r"schedule.sizes=\[1.5, 48\]: must be a list of whole",
    ),
    ({**PYRAMID, "schedule.sizes": 48}, "schedule.sizes=48: must be a list of whole numbers"),
    ({**PYRAMID, "schedule.sizes": [32, 40]}, "must end at image_size=48"),
    ({**PYRAMID, "schedule.sizes": [32, 48], "schedule.steps": [1, 2, 3]}, "3 step counts for 2"),
    ({**PYRAMID, "schedule.factor": math.inf}, "schedule.factor=inf: must be > 1"),
    ({**PYRAMID, "schedule.min_size": 0}, "schedule.min_size=0: must be a whole number"),
    ({"schedule.sizes": [32, 48]}, r"schedule.sizes=\[32, 48\] is only used by schedule=pyramid"),
    ({"schedule.steps": 5}, "schedule.steps=5 is only used by schedule=pyramid"),
    ({"schedule.name": "pyramidal"}, "schedule=pyramidal: use single or pyramid"),
]


@pytest.mark.parametrize(("changes", "pattern"), BAD_SCHEDULES, ids=lambda v: str(v)[:50])
def test_schedule_values_are_checked_naming_the_key(changes: dict, pattern: str) -> None:
    with pytest.raises(StyleLabError, match=pattern):
        validate(pair_config(**changes))


def test_good_schedules_pass() -> None:
    validate(pair_config(**PYRAMID, **{"schedule.sizes": [32, 48], "schedule.steps": [3, 2]}))
    validate(pair_config(**PYRAMID, **{"schedule.min_size": 16, "schedule.steps": [1, 2, 3, 4, 5]}))
    validate(pair_config(**PYRAMID, **{"schedule.steps": 7}))


def test_a_quoted_schedule_step_count_is_one_line_naming_the_key(tmp_path: Path) -> None:
    result, run_dir = run_in(tmp_path, *FAST, "steps=2", "schedule=pyramid", 'schedule.steps="12"')
    assert_one_line(result, "schedule.steps='12': give a whole number >= 1")
    assert not (run_dir / "losses.jsonl").exists()


def test_a_cache_dir_that_is_a_file_says_to_set_cache_dir(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    with pytest.raises(ImageError, match=r"cannot keep downloads in .*cache/images.*set cache_dir"):
        download("http://127.0.0.1:9/x.png", not_a_folder)


def test_a_null_mask_is_named_as_such() -> None:
    cfg = pair_config(**{"pair.style_masks": ["mask:left", None]})
    with pytest.raises(StyleLabError, match=r"every style needs a mask \(null is not one\)"):
        validate(cfg)
    with pytest.raises(StyleLabError, match="has 1 masks for 2 styles"):
        validate(pair_config(**{"pair.style_masks": ["mask:left"]}))


def test_transparent_mask_pixels_do_not_apply_the_style(tmp_path: Path) -> None:
    """An RGBA mask: white everywhere, opaque only on the right half; the left is 'no style'."""
    rgba = np.full((8, 8, 4), 255, dtype=np.uint8)
    rgba[:, :4, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "mask.png")
    mask = load_mask(str(tmp_path / "mask.png"), (8, 8))
    assert mask[..., :4].max() == 0 and mask[..., 4:].min() == 1
    assert open_image(tmp_path / "mask.png").getpixel((0, 0)) == (255, 255, 255)  # images: white


@pytest.mark.parametrize(
    "argument",
    ["pair.content=~/photos/a.jpg", "pair.style=https://x.org/a.jpg#sha256=ab12", "resume=~/run"],
)
def test_values_hydras_lexer_refuses_get_a_quoting_hint(argument: str) -> None:
    key, _, value = argument.partition("=")
    message = unreadable_override(argument)
    assert message is not None and f"here: '{key}=\"{value}\"'" in message, message
    assert unreadable_override(f"{key}='{value}'") is None


def test_a_home_folder_path_works_in_path_keys_and_resume(tmp_path: Path) -> None:
    """Issue 26: `~` (quoted for Hydra, as the hint says) in pair.content and in resume=."""
    home = tmp_path / "home"
    home.mkdir()
    png(home / "photo.png")
    env = {"HOME": str(home)}
    first, _ = run_in(tmp_path, *FAST, "steps=2", 'pair.content="~/photo.png"', env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.move(tmp_path / "run", home / "run")
    again = run_cli(*FAST, "steps=3", 'resume="~/run"', cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = (home / "run" / "losses.jsonl").read_text().splitlines()
    assert [json.loads(row)["step"] for row in rows] == [0, 1, 2]
    assert not (tmp_path / "~").exists() and not (tmp_path / "outputs").exists()
