"""After a stop signal nothing new starts (issue 26, cases 8 and 12), checked without SLURM.

The packed SLURM task (`packed_task.PackedTask`) runs here in-process with its jobs faked: each
job is its own batch (a sequential group, as random weights with different seeds give), and the
signal is sent to this process at the moment the real task would receive it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.stylelab_launchers import packed_task
from hydra_plugins.stylelab_launchers.batch_jobs import Job
from hydra_plugins.stylelab_launchers.submitit_launchers import (
    SlurmLauncher,
    WatchedTask,
    may_log_to_wandb,
)
from stylelab import runner, signals, slurm
from stylelab.callbacks import SweepSummary
from stylelab.engine.batch import BatchJob
from stylelab.outputs import RunFolder
from stylelab.signals import Interrupted, NotStarted
from stylelab.tracking import NullTracker, RunInfo
from tests.test_robustness import tiny_config

JOBS = 32


def stop_signal() -> None:
    """SIGTERM to this process, handled before this returns."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)


class FakeJobs:
    """The jobs of a packed task: opening, running (one batch each) and closing them."""

    def __init__(self, signal_in_open: int | None = None, signal_in_run: int | None = None):
        self.signal_in_open, self.signal_in_run = signal_in_open, signal_in_run
        self.opened: list[int] = []
        self.ran: list[int] = []
        self.outcomes: dict[int, object] = {}

    def halves(self, *args: object) -> FakeJobs:
        return self

    def open(self, num: int) -> Job:
        self.opened.append(num)
        if num == self.signal_in_open:  # e.g. while its W&B run starts
            stop_signal()
        job = Job(num, OmegaConf.create(), JobReturn())
        job.request = BatchJob(synthesis=None, key=(num,))  # type: ignore[arg-type]
        return job

    def run_together(self, batch: list[Job]) -> None:
        for job in batch:
            self.ran.append(job.num)
            if job.num == self.signal_in_run:  # the batch checkpoints at its next step
                stop_signal()
                job.outcome = Interrupted(signal.SIGTERM, step=28)
            else:
                job.outcome = "finished"

    def close(self, job: Job) -> JobReturn:
        """As `stylelab.run.job_steps`: an interrupted job asks for the requeue, returns inf."""
        self.outcomes[job.num] = job.outcome
        if isinstance(job.outcome, Interrupted):
            slurm.submitit_requeue(job.outcome)  # only recorded, inside the task
        job.result.return_value = math.inf if isinstance(job.outcome, Interrupted) else job.num
        job.result.status = JobStatus.COMPLETED
        return job.result


@pytest.fixture
def packed(monkeypatch: pytest.MonkeyPatch) -> tuple[packed_task.PackedTask, list]:
    """A packed task of `JOBS` jobs in a submitit SLURM job, and the requeues it asks for."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setattr(packed_task.Singleton, "set_state", lambda state: None)
    monkeypatch.setattr(packed_task, "setup_globals", lambda: None)
    monkeypatch.setattr(packed_task, "configure_log", lambda *args: None)
    monkeypatch.setattr(packed_task, "job_config", lambda ctx, cfg, overrides, num, task: num)
    monkeypatch.setattr(packed_task, "announce", lambda batch: None)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(job_id="7_0"))
    requeues: list[Interrupted] = []
    monkeypatch.setattr(packed_task, "submitit_requeue", lambda error: requeues.append(error))
    hydra = SimpleNamespace(hydra_logging=None, verbose=False)
    launcher = SimpleNamespace(config=SimpleNamespace(hydra=hydra), hydra_context=None)
    launcher.task_function = None
    return packed_task.PackedTask(launcher), requeues


def run_task(task, jobs: FakeJobs, monkeypatch: pytest.MonkeyPatch) -> list:
    monkeypatch.setattr(packed_task, "JobHalves", jobs.halves)
    monkeypatch.setattr(packed_task, "run_together", jobs.run_together)
    return task([([f"seed={num}"], num) for num in range(JOBS)], {})


def test_a_packed_task_signalled_in_its_second_job_starts_nothing_more(packed, monkeypatch):
    task, requeues = packed
    jobs = FakeJobs(signal_in_run=1)
    run_task(task, jobs, monkeypatch)
    assert jobs.ran == [0, 1], "a job started after the stop signal"
    assert jobs.outcomes[0] == "finished"
    assert isinstance(jobs.outcomes[1], Interrupted)
    assert not isinstance(jobs.outcomes[1], NotStarted)
    assert all(isinstance(jobs.outcomes[num], NotStarted) for num in range(2, JOBS))
    assert len(requeues) == 1 and requeues[0].signum == signal.SIGTERM
    assert set(task.done) == {0}  # what the requeued task keeps
    again = FakeJobs()  # the requeued task (submitit pickled it with `done`)
    returns = run_task(task, again, monkeypatch)
    assert again.opened == again.ran == list(range(1, JOBS))
    assert [r.return_value for r in returns] == list(range(JOBS))
    assert len(requeues) == 1


def test_a_signal_while_jobs_are_set_up_stops_the_setting_up(packed, monkeypatch):
    task, requeues = packed
    jobs = FakeJobs(signal_in_open=3)
    returns = run_task(task, jobs, monkeypatch)  # the requeue was declined (a cancel): it returns
    assert jobs.opened == [0, 1, 2, 3] and jobs.ran == []
    assert all(isinstance(jobs.outcomes[num], NotStarted) for num in range(4))
    assert len(requeues) == 1 and not task.done
    assert [r.return_value for r in returns[:4]] == [math.inf] * 4
    assert returns[4:] == [None] * (JOBS - 4)  # never set up


def test_a_late_repeat_in_a_submitit_job_does_not_force_a_stop(monkeypatch) -> None:
    """SLURM repeats its TERM: in a job nobody presses Ctrl-C twice; the checkpoint goes on."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setattr(signals, "GRACE_S", 0.05)
    with signals.stop_on_signals() as received:
        stop_signal()
        time.sleep(0.1)
        try:
            stop_signal()  # after the grace period: outside SLURM this would stop at once
        except KeyboardInterrupt:
            pytest.fail("a repeat of SLURM's signal forced a stop")
        assert received == [signal.SIGTERM]


def slurm_launcher(tmp_path: Path) -> SlurmLauncher:
    launcher = SlurmLauncher.__new__(SlurmLauncher)
    launcher.config = OmegaConf.create({"hydra": {"job": {"name": "run"}}})
    launcher._EXECUTOR = "slurm"
    launcher.job_dir = lambda overrides, num, job_id: tmp_path / str(num)  # type: ignore[method-assign]
    return launcher


def test_a_finished_job_of_a_dead_task_keeps_its_result_and_unset_jobs_never_started(
    tmp_path: Path, caplog
) -> None:
    """The task died (no result file) after job 0 finished; job 1 was interrupted; a cancelled
    task returns None for job 2, which it never set up."""
    launcher = slurm_launcher(tmp_path)
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "summary.json").write_text('{"status": "finished", "final/total": 1.5}')

    def no_result() -> list:
        raise RuntimeError("no result file")

    task = SimpleNamespace(job_id="7_0", state="FAILED", paths=SimpleNamespace(stderr="7_0.err"))
    task.done, task.results = (lambda force_check=False: True), no_result
    members = [(["seed=0"], 0), (["seed=1"], 1)]
    dead = WatchedTask(task, launcher, members, packed=True).returns()
    assert [r.return_value for r in dead] == [1.5, math.inf]
    assert "job #0" not in " ".join(r.message for r in caplog.records if r.levelname == "ERROR")
    task.results = lambda: [[JobReturn(status=JobStatus.COMPLETED), None]]
    members = [(["seed=1"], 1), (["seed=2"], 2)]
    (never,) = WatchedTask(task, launcher, members, packed=True).returns()[1:]
    assert never.return_value == math.inf
    summary = json.loads((tmp_path / "2" / "summary.json").read_text())
    assert summary["status"] == "not started"
    with pytest.raises(SystemExit):  # a job did not finish
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": tmp_path}}}))
    lines = [r.message for r in caplog.records]
    assert any("job 2: never started (its array task 7_0 was stopped" in line for line in lines)


class IdTracker(NullTracker):
    """A tracker whose runs have ids: a new one, or the one it was asked to continue."""

    def start(self, info: RunInfo) -> None:
        self.run_id = info.resume_id or f"run-{id(self)}"


def test_a_job_that_never_started_starts_afresh_in_its_folder_and_its_tracker_run(tmp_path):
    cfg = tiny_config(steps=2)
    first = IdTracker()
    job = runner.synthesis_steps(cfg, tmp_path, first, RunInfo({}, tmp_path, "j"))
    next(job)  # set up, its synthesis ready: then the launcher stops before running it
    with pytest.raises(Interrupted):
        job.throw(NotStarted(signal.SIGTERM))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "not started" and summary["tracker_run_id"] == first.run_id
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "losses.jsonl").exists()
    RunFolder(tmp_path).check_fresh()  # a new run may use the folder
    again = IdTracker()
    runner.run_synthesis(cfg, tmp_path, again, RunInfo({}, tmp_path, "j"))
    assert again.run_id == first.run_id  # one tracker run, not an empty one left behind
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


# --- the W&B service lines of a SLURM batch script -------------------------------------------------

FAST_JOBS = [["model.weights=random", "logger=none", f"seed={seed}"] for seed in range(3)]


def test_a_sweep_that_may_log_to_wandb_gets_the_wandb_service_and_one_that_cannot_does_not() -> (
    None
):
    assert may_log_to_wandb("wandb", FAST_JOBS)  # the default logger
    assert may_log_to_wandb("wandb", [["seed=0"]])
    assert not may_log_to_wandb("none", FAST_JOBS)  # `logger=none` repeated by every job
    assert not may_log_to_wandb("none", [["seed=0", "+logger.name=none"], ["loggers=2"]])
    for job in ("logger=wandb", "logger.name=wandb", "++logger.name=wandb", "logger.mode=offline"):
        assert may_log_to_wandb("none", [*FAST_JOBS, ["logger=none", job]]), job
    assert may_log_to_wandb("none", [["~logger"]]) and may_log_to_wandb("none", [["~logger.name"]])


def test_a_slurm_sweeps_batch_scripts_start_a_wandb_service_only_if_it_may_log_to_wandb(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scripts_setup: list[list[str]] = []

    def submitted(self, job_overrides, initial_job_idx):  # what sbatch would get: params' setup
        scripts_setup.append(list(self.params["setup"] or []))
        return []

    # where SlurmLauncher submits (Hydra's plugin scan may import its own copy of the class)
    base = next(c for c in SlurmLauncher.__mro__ if c.__name__ == "WaitForEveryJob")
    monkeypatch.setattr(base, "launch", submitted)
    launcher = SlurmLauncher(setup=["module load cuda"])
    for logger, jobs in [
        ("wandb", [["seed=0"]]),
        ("none", FAST_JOBS),
        ("none", [["logger=wandb"]]),
    ]:
        launcher.config = OmegaConf.create({"logger": {"name": logger}})
        launcher.launch(jobs, 0)
        assert launcher.params["setup"] == ["module load cuda"]
    with_service, without, switched_on = scripts_setup
    assert with_service[0] == "module load cuda" and any(
        "beta core start" in x for x in with_service
    )
    assert without == ["module load cuda"] and switched_on == with_service
