"""Run folders never mix, resume continues only the same run, and stop signals are honest."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from stylelab import runner, signals
from stylelab.engine.synthesis import Synthesizer
from stylelab.outputs import RunFolder
from stylelab.tracking import NullTracker, RunInfo
from tests.cli_fork import ForkedProcess
from tests.conftest import FAST, run_cli, start_cli
from tests.test_robustness import tiny_config

pytestmark = pytest.mark.slow
LONG = [*FAST, "steps=100000", "log.flush_every=1", "log.image_every=1000"]


def one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (Hydra's too) with a hash of its bytes, except the lock."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


def wait_for_rows(
    process: subprocess.Popen | ForkedProcess, pattern: str, cwd: Path, rows: int = 3
) -> Path:
    """The folder of the first `losses.jsonl` matching `pattern` once it has `rows` rows."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list(cwd.glob(pattern))
        if found and len(found[0].read_text().splitlines()) >= rows:
            return found[0].parent
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no {pattern} with {rows} rows within 120 s")


def loss_steps(run_dir: Path) -> list[int]:
    return [
        json.loads(line)["step"] for line in (run_dir / "losses.jsonl").read_text().splitlines()
    ]


def finished(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def fast_runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished 2-step runs, made once (side by side) for the tests to copy: "run", and
    "other" with another style_weight (7), whose checkpoint belongs to another run."""
    cwd = tmp_path_factory.mktemp("fast_runs")
    started = {
        name: start_cli(*FAST, "steps=2", *extra, f"hydra.run.dir={cwd / name}", cwd=cwd)
        for name, extra in [("run", []), ("other", ["style_weight=7"])]
    }
    results = [finished(process) for process in started.values()]
    for result in results:
        assert result.returncode == 0, result.stderr
    return {name: cwd / name for name in started}


def copy_run(source: Path, run_dir: Path) -> Path:
    """A copy of a finished run folder at `run_dir` (the original stays untouched)."""
    shutil.copytree(source, run_dir)
    return run_dir


# 1. Unique run folders, and a lock -----------------------------------------------------------


def test_runs_started_together_get_their_own_folders(tmp_path: Path) -> None:
    runs = [start_cli(*FAST, "steps=3", f"style_weight={w}", cwd=tmp_path) for w in (1e3, 1e6)]
    for process in runs:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    folders = sorted(p.parent for p in tmp_path.glob("outputs/*/*/config.yaml"))
    assert len(folders) == 2, folders
    weights = set()
    for folder in folders:
        assert re.fullmatch(r"\d\d-\d\d-\d\d-[0-9a-f]{6}", folder.name), folder.name
        weights.add(yaml.safe_load((folder / "config.yaml").read_text())["style_weight"])
        assert loss_steps(folder) == [0, 1, 2]
    assert weights == {1e3, 1e6}


def test_a_folder_in_use_by_a_live_run_is_refused_and_left_alone(tmp_path: Path) -> None:
    run_dir = tmp_path / "shared"
    first = start_cli(*LONG, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    wait_for_rows(first, "shared/losses.jsonl", tmp_path)
    # Paused, the first run stays alive and keeps its lock but leaves both cores to the others.
    first.send_signal(signal.SIGSTOP)
    try:
        before = snapshot(run_dir / ".hydra") | {"config.yaml": snapshot(run_dir)["config.yaml"]}
        second = run_cli(
            *FAST, "steps=2", "style_weight=1", f"hydra.run.dir={run_dir}", cwd=tmp_path
        )
        one_error_line(second, str(run_dir), "in use by another run", f"pid {first.pid}")
        resumed = run_cli(f"resume={run_dir}", "steps=5", cwd=tmp_path)
        one_error_line(resumed, "in use by another run")
        after = snapshot(run_dir / ".hydra") | {"config.yaml": snapshot(run_dir)["config.yaml"]}
        assert after == before
    finally:
        first.send_signal(signal.SIGCONT)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr
    assert "in use" not in (run_dir / "run.log").read_text()  # nothing of the refused runs


def test_a_finished_run_folder_is_refused_naming_resume(tmp_path: Path, fast_runs) -> None:
    run_dir = copy_run(fast_runs["run"], tmp_path / "done")
    before = snapshot(run_dir)
    again = run_cli(*FAST, "steps=2", "style_weight=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    one_error_line(again, "already holds a finished run", f"resume={run_dir}", "another folder")
    assert snapshot(run_dir) == before  # no appended losses, no overwritten .hydra or config


# 2. What resume may change; checkpoints of another run or damaged ----------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(cwd, folder) of a finished 2-step run logged to an offline W&B run."""
    cwd = tmp_path_factory.mktemp("resume")
    result = run_cli(
        "model.weights=random", "image_size=32", "steps=2", "hydra.run.dir=run", cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    return cwd, cwd / "run"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("image_size=48", "image_size (32 -> 48)"),
        ("optim=adam", "optim.name (lbfgs -> adam)"),
        ("optim.lr=0.5", "optim.lr (1.0 -> 0.5)"),
        ("layers=approach1", "layers.name (approach2 -> approach1)"),
        ("style_weight=5", "style_weight (1000000.0 -> 5.0)"),
        ("pair=coffee_hubble", "pair.content"),
        ("seed=3", "seed (0 -> 3)"),
    ],
)
def test_resume_refuses_what_a_run_cannot_change_before_writing(
    finished_run, override: str, named: str
) -> None:
    cwd, run_dir = finished_run
    before = snapshot(run_dir)
    result = run_cli(f"resume={run_dir}", override, "steps=4", cwd=cwd)
    one_error_line(result, f"resume={run_dir}", "cannot change", named, "start a new run")
    assert snapshot(run_dir) == before  # summary, losses, W&B run: all as they were
    assert not (cwd / "outputs").exists()


def test_resume_with_more_steps_records_them_and_logs_into_the_run(
    tmp_path: Path, fast_runs
) -> None:
    run_dir = copy_run(fast_runs["run"], tmp_path / "run")
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    result = run_cli(
        f"resume={run_dir}", "steps=4", "logger=none", "log.flush_every=1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["steps"] == 4
    assert loss_steps(run_dir) == [0, 1, 2, 3]
    assert "resuming from step 2 of 4" in (run_dir / "run.log").read_text()  # 11a: its own log
    assert not (tmp_path / "outputs").exists()  # no stray folder for the resumed session
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == overrides


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        ("empty", ["empty, truncated or corrupt"]),
        ("truncated", ["empty, truncated or corrupt"]),
        ("garbage", ["corrupt"]),
        ("other run", ["belongs to another run", "style_weight (7.0 -> 1000000.0)"]),
    ],
)
def test_a_damaged_or_foreign_checkpoint_is_one_line(
    tmp_path: Path, fast_runs, damage: str, fragments
) -> None:
    run_dir = copy_run(fast_runs["run"], tmp_path / "run")
    checkpoint = run_dir / "checkpoint.pt"
    data = checkpoint.read_bytes()
    if damage == "other run":
        checkpoint.write_bytes((fast_runs["other"] / "checkpoint.pt").read_bytes())
    else:
        checkpoint.write_bytes(
            {"empty": b"", "truncated": data[: len(data) // 2]}.get(damage, b"x" * 999)
        )
    before = snapshot(run_dir)
    result = run_cli(f"resume={run_dir}", "steps=4", cwd=tmp_path)
    one_error_line(result, str(checkpoint), *fragments)
    assert snapshot(run_dir) == before


# 3. Checkpoints hold only tensors and plain data, and are loaded as such -----------------------


class Payload:
    """Pickles as a call to os.system: what `weights_only=False` would run on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_payload_in_the_checkpoint_does_not_run(tmp_path: Path, fast_runs) -> None:
    run_dir = copy_run(fast_runs["run"], tmp_path / "run")
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    marker = tmp_path / "payload-ran"
    torch.save({**checkpoint, "tracker_run_id": Payload(marker)}, run_dir / "checkpoint.pt")
    result = run_cli(f"resume={run_dir}", "steps=4", cwd=tmp_path)
    one_error_line(result, "holds objects other than tensors and plain data", "could run code")
    assert not marker.exists()


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_checkpoints_load_with_weights_only(tmp_path: Path, optimizer: str) -> None:
    cfg = tiny_config(steps=4)
    cfg.optim.name, cfg.log.checkpoint_every = optimizer, 2
    real_finish = Synthesizer.step

    def keep_mid_run_checkpoint(self):
        terms = real_finish(self)
        if self.step_count == 3:  # the step-2 checkpoint still has the optimiser state
            (tmp_path / "mid.pt").write_bytes((tmp_path / "checkpoint.pt").read_bytes())
        return terms

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Synthesizer, "step", keep_mid_run_checkpoint)
        runner.run_synthesis(cfg, tmp_path, NullTracker(), RunInfo({}, tmp_path, "w"))
    state = torch.load(tmp_path / "mid.pt", weights_only=True)
    assert state["synthesis"]["optimizer"] and state["config"]["optim"]["name"] == optimizer
    assert RunFolder(tmp_path).load_checkpoint()["synthesis"]["step"] == 4


# 5. Ctrl-C / SIGTERM stop a whole multirun ---------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_whole_multirun_and_lists_every_job(tmp_path: Path, signum) -> None:
    sweep = [*LONG[:-3], "log.flush_every=1", "steps=2,100000", "style_weight=1e3,1e6"]
    process = start_cli("-m", *sweep, "hydra.sweep.dir=multirun/s", cwd=tmp_path)
    job = wait_for_rows(process, "multirun/s/2/losses.jsonl", tmp_path)
    process.send_signal(signum)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 15, "took too long to stop"
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    assert f"multirun stopped by {name}: 2 of 4 jobs finished" in stderr
    assert re.search(r"job 0: finished.*\n.*job 1: finished", stderr), stderr
    assert f"job 2: interrupted (interrupted by {name}" in stderr
    assert f"resume={Path('multirun/s/2')}" in stderr
    assert "job 3: never started (" in stderr and "steps=100000 style_weight=1000000.0" in stderr
    assert not (tmp_path / "multirun/s/3").exists()
    assert json.loads((job / "summary.json").read_text())["status"] == "interrupted"
    if signum == signal.SIGINT:
        stopped = torch.load(job / "checkpoint.pt", weights_only=True)["synthesis"]["step"]
        resumed = run_cli(f"resume={job}", f"steps={stopped + 2}", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert loss_steps(job) == list(range(stopped + 2))


# 6. A forwarded duplicate signal is not a second press; a forced stop is reported truly --------


def test_a_duplicate_sigint_still_checkpoints(tmp_path: Path) -> None:
    process = start_cli(*LONG, cwd=tmp_path)
    run_dir = wait_for_rows(process, "outputs/*/*/losses.jsonl", tmp_path)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)  # e.g. `timeout` and the process group both forward it
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and f"resume={run_dir}" in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["checkpoint"] is True
    assert (run_dir / "checkpoint.pt").is_file()


def test_a_repeat_within_the_grace_period_is_ignored_and_after_it_stops_at_once() -> None:
    with signals.stop_on_signals() as received:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # within GRACE_S: the same press, forwarded
        except KeyboardInterrupt:
            pytest.fail("a duplicate within the grace period stopped at once")
        assert received == [signal.SIGINT]
        with signals.stop_on_signals() as inner:  # a job inside a sweep starts stopped
            assert inner == [signal.SIGINT]
        with pytest.raises(KeyboardInterrupt):
            time.sleep(signals.GRACE_S + 0.1)
            os.kill(os.getpid(), signal.SIGINT)  # pressed again: stop now
            time.sleep(0.5)


def test_a_forced_stop_says_there_is_no_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(signals, "GRACE_S", 0.05, raising=False)
    real_step, real_save = Synthesizer.step, RunFolder.save_checkpoint

    def step(self):
        terms = real_step(self)
        if self.step_count == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return terms

    def slow_save(self, state):
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # pressed again while the checkpoint is pending
        time.sleep(0.5)
        return real_save(self, state)

    monkeypatch.setattr(Synthesizer, "step", step)
    monkeypatch.setattr(RunFolder, "save_checkpoint", slow_save)
    with pytest.raises(KeyboardInterrupt):
        runner.run_synthesis(tiny_config(), tmp_path, NullTracker(), RunInfo({}, tmp_path, "f"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["checkpoint"] is False
    assert not (tmp_path / "checkpoint.pt").exists()
