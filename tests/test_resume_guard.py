"""Resume continues only its own run, and only when there is something left to do (issue 26,
cases 2 and 4): a checkpoint of another run, or `steps` that cannot take effect, are refused
with one line, and the run folder keeps every byte."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from stylelab.outputs import RUN_ID_FILE
from tests.conftest import FAST, run_cli
from tests.resume_jobs import PYRAMID, TINY, checkpoint_step, job, rows
from tests.test_fault_runs import one_error_line, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def steps_of(run_dir: Path) -> list[int]:
    return [row["step"] for row in rows(run_dir)]


def refused(run_dir: Path, caplog, *overrides: str) -> str:
    """The one error line of a resume of `run_dir` that must change nothing there."""
    before = snapshot(run_dir)
    caplog.clear()
    assert job(run_dir, f"resume={run_dir}", *overrides) == 1
    assert snapshot(run_dir) == before
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    return errors[0]


# Case 2: a checkpoint belongs to the run that wrote it ---------------------------------------


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Run "a" stopped at step 2 and run "b" at step 4, with the same settings."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert job(a, *TINY, "steps=8", stop_at=2) == 130
    assert job(b, *TINY, "steps=8", stop_at=4) == 130
    return a, b


@pytest.mark.slow
def test_a_checkpoint_copied_from_another_run_is_refused_in_one_line(two_runs, tmp_path) -> None:
    a, b = two_runs
    shutil.copy(b / "checkpoint.pt", a / "checkpoint.pt")
    before = snapshot(a)
    result = run_cli(f"resume={a}", cwd=tmp_path)
    one_error_line(result, str(a / "checkpoint.pt"), "belongs to another run", "run id")
    assert snapshot(a) == before  # not losses 0-1 then 4-7
    assert not (tmp_path / "outputs").exists()


def forget_run_id(run_dir: Path, folder: bool, checkpoint: bool) -> None:
    """Make `run_dir` look as if written before run ids (in its folder, its checkpoint)."""
    if folder:
        (run_dir / RUN_ID_FILE).unlink()
    if checkpoint:
        state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        del state["run_id"]
        torch.save(state, run_dir / "checkpoint.pt")


def test_a_run_from_before_run_ids_resumes_and_stays_without_one(two_runs) -> None:
    a, _ = two_runs
    forget_run_id(a, folder=True, checkpoint=True)
    assert job(a, f"resume={a}") == 0
    assert steps_of(a) == list(range(8))
    assert not (a / RUN_ID_FILE).exists()
    assert torch.load(a / "checkpoint.pt", weights_only=True)["run_id"] is None


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("folder without an id, another run's checkpoint", "from before run ids"),
        ("folder with an id, a checkpoint without", "run id none"),
    ],
)
def test_a_checkpoint_whose_run_id_differs_from_the_folders_is_refused(
    two_runs, caplog, case: str, named: str
) -> None:
    a, b = two_runs
    if case.startswith("folder without"):
        forget_run_id(a, folder=True, checkpoint=False)
        shutil.copy(b / "checkpoint.pt", a / "checkpoint.pt")
    else:
        forget_run_id(a, folder=False, checkpoint=True)
    error = refused(a, caplog)
    assert "belongs to another run" in error and named in error, error


# Case 4: a resume must have steps left to do, and its change must take effect ----------------


@pytest.mark.slow
def test_resume_with_steps_at_or_below_those_done_is_refused_writing_nothing(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(*FAST, "steps=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    before = snapshot(run_dir)  # config.yaml, summary.json, losses.jsonl, .hydra/*
    result = run_cli(f"resume={run_dir}", "steps=2", cwd=tmp_path)
    one_error_line(result, f"resume={run_dir}", "has done 3 steps", "nothing to do", "more steps")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("steps", [2, 4])
def test_an_interrupted_run_needs_steps_above_its_checkpoints(
    tmp_path: Path, caplog, steps: int
) -> None:
    run_dir = tmp_path / "run"
    assert job(run_dir, *TINY, "steps=8", stop_at=4) == 130
    error = refused(run_dir, caplog, f"steps={steps}")
    assert f"has done 4 steps; steps={steps} ends the run at step {steps}" in error
    assert job(run_dir, f"resume={run_dir}", "steps=5") == 0
    assert steps_of(run_dir) == list(range(5))


def test_a_finished_pyramid_runs_longer_with_schedule_steps_not_steps(
    tmp_path: Path, caplog
) -> None:
    run_dir = tmp_path / "run"
    assert job(run_dir, *TINY, *PYRAMID, "schedule.steps=[3,3]") == 0
    error = refused(run_dir, caplog, "steps=100")
    assert "steps=100 changes none of the run's stages" in error
    assert "schedule.steps=[3,3] sets them" in error
    error = refused(run_dir, caplog, "schedule.steps=[4,4]")
    assert "changes the steps of stages it has finished ([3] -> [4])" in error
    assert "give schedule.steps=[3,4]" in error
    assert job(run_dir, f"resume={run_dir}", "schedule.steps=[3,5]") == 0
    assert [(r["step"], r["size"]) for r in rows(run_dir)] == [
        *((s, 16) for s in range(3)), *((s, 32) for s in range(3, 8)),
    ]  # fmt: skip
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["schedule"]["steps"] == [3, 5]


def test_a_pyramid_stopped_in_its_first_stage_runs_longer_with_steps(
    tmp_path: Path, caplog
) -> None:
    run_dir, straight = tmp_path / "run", tmp_path / "straight"
    assert job(run_dir, *TINY, *PYRAMID, "steps=3", stop_at=2) == 130
    assert checkpoint_step(run_dir) == 2
    error = refused(run_dir, caplog, "schedule.steps=[1,5]")
    assert "ends that stage at step 1" in error and "at least 2 steps" in error, error
    assert job(run_dir, f"resume={run_dir}", "steps=5") == 0  # both stages grow to 5
    assert job(straight, *TINY, *PYRAMID, "steps=5") == 0
    for got, want in zip(rows(run_dir), rows(straight), strict=True):
        assert got == pytest.approx(want, rel=1e-5)
