"""Packed SLURM tasks of 32+ jobs stopped by `scancel --signal=TERM` (issue 26, case 12).

Two sweeps at once, one array task each (`jobs_per_task` = all of its jobs): a sequential group
(random weights, 32 seeds: each seed is its own VGG, so the jobs run one after another) and a
batched group (3 seeds x 11 style weights: 3 batches of 11). Each task is signalled while its
second job (batch) runs: that one checkpoints, nothing further starts, the task is requeued
once, and the requeued task resumes it and runs the rest. Every job then holds each of its
steps exactly once, and no job is reported dead.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli_fork import ForkedProcess
from tests.test_slurm import (
    accounting,
    finish,
    job_id,
    loss_steps,
    preempt,
    slurm_cluster,  # noqa: F401 (the fixture)
    start_sweep,
    submitit_logs,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
STEPS = 10
FAST = ("model.weights=random", "image_size=32", "logger=none", "optim=adam", f"steps={STEPS}")
FAST += ("log.flush_every=1", "log.image_every=1000")
GROUPS = {  # name: (swept overrides, jobs, jobs per batch)
    "sequential": (("seed=range(0,32)",), 32, 1),
    "batched": (("seed=0,1,2", "style_weight=range(100000,1200000,100000)"), 33, 11),
}


def started(sweep_dir: Path) -> list[Path]:
    """The job folders that have logged a step."""
    return [job for job in sweep_dir.glob("*") if job.is_dir() and loss_steps(job)]


def signal_second_batches(waiting: dict[str, Path]) -> Callable[[], bool]:
    """A check for `wait_for`: sends SIGTERM to each sweep's task (`scancel --signal=TERM`) once
    its second job (batch) has logged a step; true once every one was."""

    def all_signalled() -> bool:
        for name, sweep_dir in list(waiting.items()):
            if len(started(sweep_dir)) > GROUPS[name][2]:
                task = job_id(sweep_dir)
                subprocess.run(["scancel", "--signal=TERM", task], check=True, timeout=60)
                del waiting[name]
        return not waiting

    return all_signalled


@pytest.mark.usefixtures("slurm_cluster")
def test_packed_tasks_stop_at_once_and_the_requeued_task_runs_the_rest(tmp_path: Path) -> None:
    sweeps: dict[str, tuple[Path, subprocess.Popen | ForkedProcess]] = {}
    try:
        for name, (swept, jobs, _) in GROUPS.items():
            sweep_dir = tmp_path / "multirun" / name
            process = start_sweep(
                tmp_path,
                *FAST,
                *swept,
                f"hydra.launcher.jobs_per_task={jobs}",
                f"hydra.sweep.dir={sweep_dir}",
                env={"OMP_NUM_THREADS": "1"},  # one CPU per task: no threads fighting for it
            )
            sweeps[name] = sweep_dir, process
        wait_for(
            "each task's second job (batch) to log a step",
            signal_second_batches({name: d for name, (d, _) in sweeps.items()}),
            600,
            tmp_path,
        )
        for sweep_dir, _ in sweeps.values():
            preempt(job_id(sweep_dir), signal.SIGTERM, sweep_dir, sent=True)
        stderrs = {name: finish(process, d, timeout=900) for name, (d, process) in sweeps.items()}
    finally:
        for _, process in sweeps.values():
            process.kill()
    for name, (sweep_dir, process) in sweeps.items():
        _, jobs, batch = GROUPS[name]
        stderr, logs = stderrs[name], submitit_logs(sweep_dir)
        assert process.returncode == 0, f"{name}\n{stderr[-3000:]}\n{logs}"
        assert f"multirun finished: {jobs} of {jobs} jobs succeeded" in stderr, stderr[-3000:]
        assert "died" not in stderr and "never started" not in stderr, stderr[-3000:]
        task = job_id(sweep_dir)
        wait_for(
            f"SLURM to record the {name} task as requeued once, then completed",
            lambda task=task: accounting(task) == ["REQUEUED", "COMPLETED"],
            30,
            sweep_dir,
        )
        log = "\n".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*.err"))
        # First attempt: one batch finished, one interrupted mid-run, the others never ran.
        interrupted = re.findall(r"interrupted by SIGTERM at step (\d+)", log)
        assert len(interrupted) == batch and all(0 < int(s) < STEPS for s in interrupted), log
        not_started = re.findall(r"batch of \d+: jobs (.*) not started", log)
        assert sum(len(jobs.split(", ")) for jobs in not_started) == jobs - 2 * batch, log
        assert f"({jobs - batch} to run)" in log, "the requeued task reruns a finished job"
        for job in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
            summary = json.loads((job / "summary.json").read_text())
            assert summary["status"] == "finished", (job, summary)
            assert loss_steps(job) == list(range(STEPS)), job
