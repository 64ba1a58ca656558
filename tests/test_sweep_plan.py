"""Numbering a launch's jobs in a sweep folder that already holds jobs (in-process, no runs)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hydra_plugins.stylelab_launchers.sweep_plan import number_jobs, skipped_result


def job(sweep: Path, name: str, overrides: list[str], status: str | None) -> Path:
    """A job folder as a run leaves it: finished, interrupted (with a checkpoint) or killed."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra/overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / "config.yaml").write_text("steps: 2\n")
    if status:
        summary = {"status": status, "final/total": 1.5}
        (folder / "summary.json").write_text(json.dumps(summary))
        (folder / "checkpoint.pt").write_bytes(b"")
    return folder


def test_finished_jobs_are_skipped_interrupted_continue_and_the_rest_get_new_numbers(
    tmp_path: Path,
) -> None:
    done = job(tmp_path, "0", ["a=1", "steps=2"], "finished")
    job(tmp_path, "1", ["a=2", "steps=2"], "interrupted")
    job(tmp_path, "2", ["a=3", "steps=2"], None)  # killed
    job(tmp_path, "3", ["a=4", "steps=2"], "failed")
    planned = [{"num": 4, "overrides": ["a=5", "steps=2"], "started": False}]
    launch = [["a=1", "steps=2"], ["steps=9", "a=2"], ["a=3", "steps=2"], ["a=4", "steps=2"]]
    launch += [["a=5", "steps=9"], ["a=6", "steps=2"], ["steps=2", "a=1"]]
    assert number_jobs(tmp_path, planned, launch, 0) == [
        (done, launch[0]),  # the same overrides finished in job 0: skipped
        (1, launch[1]),  # interrupted: continues, with more steps
        (5, launch[2]),  # killed and failed jobs keep their folders: new numbers
        (6, launch[3]),
        (4, launch[4]),  # planned, never started: keeps its number
        (7, launch[5]),
        (8, launch[6]),  # job 0 is matched once
    ]
    result = skipped_result(done, launch[0], "run")
    assert result.return_value == 1.5 and result.working_dir == str(done)


def test_a_fresh_sweep_numbers_from_the_launchers_first_index(tmp_path: Path) -> None:
    assert number_jobs(tmp_path, [], [["a=1"], ["a=2"]], 3) == [(3, ["a=1"]), (4, ["a=2"])]
