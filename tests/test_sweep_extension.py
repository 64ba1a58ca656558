"""Re-running a sweep's command over its folder never rewrites a job; it extends the sweep."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import yaml

from stylelab import report
from stylelab.callbacks import collect_summaries, redone
from tests.conftest import FAST, run_cli, start_cli
from tests.test_fault_runs import finished, snapshot, wait_for_rows

pytestmark = pytest.mark.slow
SWEEP = [*FAST, "steps=2", "hydra.sweep.dir=multirun/s"]
LAUNCHERS = {"sequential": [], "batched": ["hydra/launcher=batched"]}


def job_files(sweep: Path) -> dict[str, dict[str, str]]:
    """Every job folder's files (its lock too) with hashes of their bytes."""
    return {
        job.name: {**snapshot(job), ".lock": (job / ".lock").read_text()}
        for job in sorted(sweep.iterdir())
        if job.is_dir()
    }


def status(job: Path) -> str:
    return json.loads((job / "summary.json").read_text())["status"]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_rerun_keeps_finished_jobs_and_extends_the_sweep(tmp_path: Path, launcher) -> None:
    args = [*SWEEP, *LAUNCHERS[launcher]]
    first = run_cli(*args, "style_weight=1e3,1e6", cwd=tmp_path, multirun=True)
    assert first.returncode == 0, first.stderr
    sweep = tmp_path / "multirun/s"
    before = job_files(sweep)
    again = run_cli(*args, "style_weight=1e3,1e6", cwd=tmp_path, multirun=True)
    assert again.returncode == 0, again.stderr
    assert job_files(sweep) == before
    more = run_cli(*args, "style_weight=7,1e3", cwd=tmp_path, multirun=True)
    assert more.returncode == 0, more.stderr
    assert {name: files for name, files in job_files(sweep).items() if name in before} == before
    assert "style_weight=1000.0: already finished in job 0" in more.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]
    assert status(sweep / "2") == "finished"
    assert (sweep / "2/.hydra/overrides.yaml").read_text().count("style_weight=7") == 1
    assert "multirun finished: 3 of 3 jobs succeeded" in more.stderr
    assert re.search(r"job 0: finished, final total \S+ \[style_weight=1000\]", more.stderr)
    assert re.search(r"job 2: finished, final total \S+ \[style_weight=7\]", more.stderr)
    assert [job.name for job in report.load_jobs(sweep)] == ["0", "1", "2"]


def test_a_killed_job_keeps_its_folder_and_runs_again_as_a_new_job(tmp_path: Path) -> None:
    args = [*FAST, "log.flush_every=1", "hydra.sweep.dir=multirun/s", "style_weight=1e3,1e6"]
    process = start_cli("-m", *args, "steps=100000", cwd=tmp_path)
    wait_for_rows(process, "multirun/s/0/losses.jsonl", tmp_path)
    process.send_signal(signal.SIGKILL)
    finished(process)
    sweep = tmp_path / "multirun/s"
    before = job_files(sweep)
    again = run_cli(*args, "steps=2", cwd=tmp_path, multirun=True)
    assert again.returncode == 1, again.stderr  # job 0 was killed
    assert job_files(sweep)["0"] == before["0"]
    assert not (sweep / "0/summary.json").exists()
    assert status(sweep / "1") == status(sweep / "2") == "finished"  # 1: planned, never started
    assert re.search(r"job 0: killed: .*\[style_weight=1000, steps=100000\]", again.stderr)
    assert re.search(r"job 2: finished, .* \[style_weight=1000, steps=2\]", again.stderr)


def test_a_killed_job_done_again_does_not_fail_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    for name, overrides, summary in (
        ("0", ["a=1"], None),
        ("1", ["a=2"], {"status": "finished", "final/total": 1.0}),
        ("2", ["a=1"], {"status": "finished", "final/total": 2.0}),
    ):
        (sweep / name / ".hydra").mkdir(parents=True)
        (sweep / name / ".hydra/overrides.yaml").write_text(yaml.safe_dump(overrides))
        if summary:
            (sweep / name / "summary.json").write_text(json.dumps(summary))
    assert redone(collect_summaries(sweep)) == {sweep / "0": "2"}


def test_a_job_whose_folder_holds_another_run_is_refused_before_writing(tmp_path: Path) -> None:
    result = run_cli(
        *SWEEP, "hydra.sweep.subdir=same", "style_weight=1e3,1e6", cwd=tmp_path, multirun=True
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "job #1 not run: " in result.stderr and "already holds a finished run" in result.stderr
    job = tmp_path / "multirun/s/same"
    assert "style_weight=1000.0" in (job / ".hydra/overrides.yaml").read_text()
    assert status(job) == "finished"
