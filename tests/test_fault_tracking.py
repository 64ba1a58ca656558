"""W&B faults: lost records fail the run, an unreachable server costs `logger.init_timeout`
at most (Ctrl-C stops at once, no ghost run), and bad names or modes are one clear line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from stylelab.errors import StyleLabError
from stylelab.tracking import BackgroundTracker, RunInfo, Tracker, TrackerError, make_tracker
from stylelab.tracking import wandb_tracker as wt
from tests.cli_fork import ForkedProcess
from tests.conftest import records_of, run_cli, run_python, start_stylelab, wandb_records

STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


class FailingTracker(Tracker):
    """Writes fail from the third row on, like a disk that fills up."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if step >= 2:
            raise OSError(28, "No space left on device")
        self.rows.append(step)


def test_a_failed_write_fails_the_next_flush_once() -> None:
    tracker = BackgroundTracker(FailingTracker())
    tracker.start(RunInfo(config={}, run_dir=Path("."), name="x"))
    for step in range(4):
        tracker.log_metrics(step, {"total": 1.0})
    with pytest.raises(TrackerError, match="No space left on device") as raised:
        tracker.flush()
    assert isinstance(raised.value, StyleLabError) and "\n" not in str(raised.value)
    tracker.flush()  # raised once; the runner has failed by now
    tracker.finish(1, {"status": "failed"})


def test_a_failed_write_fails_a_successful_finish() -> None:
    tracker = BackgroundTracker(FailingTracker())
    tracker.start(RunInfo(config={}, run_dir=Path("."), name="x"))
    for step in range(3):
        tracker.log_metrics(step, {"total": 1.0})
    with pytest.raises(TrackerError, match="log_metrics failed"):
        tracker.finish(0, {"status": "finished"})
    tracker.finish(1, {"status": "failed"})  # the runner's second call stays quiet


def test_a_run_whose_tracker_lost_records_fails(tmp_path: Path) -> None:
    from stylelab import runner
    from tests.test_robustness import tiny_config

    tracker = BackgroundTracker(FailingTracker())
    with pytest.raises(TrackerError, match="No space left on device"):
        runner.run_synthesis(tiny_config(steps=4), tmp_path, tracker, RunInfo({}, tmp_path, "x"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]


SIGKILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from stylelab.tracking import RunInfo, make_tracker

tracker = make_tracker("wandb", mode="offline")
tracker.start(RunInfo(config={}, run_dir=Path(sys.argv[1]), name="killed"))
for step in range(30):
    tracker.log_metrics(step, {"total": float(step)})
tracker.flush()  # what the loop does before each checkpoint
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_flush_puts_every_row_on_disk_before_a_sigkill(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = run_python(["-c", SIGKILL_SCRIPT, str(tmp_path)], tmp_path, env, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    rows = [h["item"] for h in records_of(wandb_records(tmp_path), "history")]
    assert [row["step"] for row in rows] == list(range(30))


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (root only), left with 64 KiB free once W&B has started."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)


def test_a_full_disk_fails_the_run_instead_of_losing_it(full_disk: Path, monkeypatch) -> None:
    monkeypatch.setattr(wt, "WRITE_TIMEOUT_SECONDS", 2.0)
    tracker = make_tracker("wandb", mode="offline")
    tracker.start(RunInfo(config={}, run_dir=full_disk, name="full"))
    try:
        fill(full_disk)
        image = np.full((64, 64, 3), 128, np.uint8)
        for step in range(20):
            tracker.log_image("synthesis", image, step=step)
            tracker.log_metrics(step, {f"layer{i}": float(step) for i in range(50)})
        with pytest.raises(TrackerError, match=r"W&B lost records: .*logger=none"):
            tracker.flush()
    finally:
        tracker.finish(1, {"status": "failed"})


def test_a_blank_wandb_mode_counts_as_unset(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    tracker = wt.WandbTracker(mode="auto")
    tracker.start(RunInfo(config={}, run_dir=tmp_path, name="blank"))
    try:
        assert tracker.mode == "offline"
        tracker.log_metrics(0, {"total": 1.0})
    finally:
        tracker.finish(0, {"status": "finished"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "onlin"}, "logger.mode=onlin: use one of auto, online, offline, disabled"),
        ({"project": "a/b?c"}, r"logger.project='a/b\?c': .*1 to 128 characters.*found / \?"),
        ({"project": "p" * 200}, "logger.project='p+': .*1 to 128 characters.*has 200"),
        ({"init_timeout": 0}, "logger.init_timeout=0: must be > 0"),
    ],
)
def test_bad_logger_options_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(StyleLabError, match=message) as raised:
        make_tracker("wandb", **options)
    assert "\n" not in str(raised.value)


def test_a_bad_project_name_fails_the_cli_in_one_line(tmp_path: Path) -> None:
    result = run_cli("model.weights=random", "image_size=32", "logger.project=a/b?c", cwd=tmp_path)
    assert result.returncode == 1
    assert "logger.project=" in result.stderr and "a/b?c" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A W&B URL on 127.0.0.1 that accepts connections and never answers (stops by itself)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])
        for conn in held:
            conn.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)


def start_cli(cwd: Path, url: str, *overrides: str) -> subprocess.Popen | ForkedProcess:
    """The CLI in `auto` mode with an API key and `url` as the W&B server (stderr in stdout)."""
    env = {**os.environ, "WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": url}
    env.update(PYTHONUNBUFFERED="1", WANDB_SILENT="true", NETRC=str(cwd / "netrc"))
    env.pop("WANDB_MODE", None)
    args = ["model.weights=random", "image_size=32", *overrides]
    return start_stylelab(args, cwd, env, stderr_to_stdout=True)


def logged_at(line: str) -> datetime:
    return datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f")


def wandb_folders(cwd: Path) -> list[str]:
    return sorted(path.name for path in cwd.glob("outputs/*/*/wandb/*run-*"))


@pytest.mark.slow
def test_an_unanswering_server_costs_init_timeout_then_logs_offline(
    tmp_path: Path, silent_server: str
) -> None:
    process = start_cli(tmp_path, silent_server, "steps=2", "logger.init_timeout=3")
    output = process.communicate(timeout=150)[0]
    assert process.returncode == 0, output
    lines = output.splitlines()
    asking = next(line for line in lines if "contacting W&B (up to 3 s; Ctrl-C" in line)
    offline = next(line for line in lines if "W&B unreachable" in line)
    assert (logged_at(offline) - logged_at(asking)).total_seconds() < 3 + 5
    folders = wandb_folders(tmp_path)
    assert len(folders) == 1 and folders[0].startswith("offline-run-"), folders  # no ghost


@pytest.mark.slow
def test_ctrl_c_while_contacting_wandb_stops_the_run(tmp_path: Path, silent_server: str) -> None:
    process = start_cli(tmp_path, silent_server, "steps=50", "logger.init_timeout=120")
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "contacting W&B" in line:
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    output = "".join(lines) + process.communicate(timeout=100)[0]
    # seconds on an idle machine; generous for a loaded one, far below the 120 s timeout
    assert time.monotonic() - sent < 40, output
    assert process.returncode == 130, output
    assert "interrupted by SIGINT" in output
    folders = wandb_folders(tmp_path)
    assert len(folders) == 1 and folders[0].startswith("offline-run-"), folders
