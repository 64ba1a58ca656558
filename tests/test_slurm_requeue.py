"""The hand-over to submitit's requeue (stylelab.slurm), without a cluster."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from submitit.core.job_environment import JobEnvironment, SignalHandler
from submitit.core.utils import UncompletedJobError

from stylelab import slurm
from stylelab.signals import Interrupted

INTERRUPTED = Interrupted(signal.SIGTERM, step=7)


@pytest.fixture
def in_slurm_job(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """A submitit SLURM job whose USR2 handler is submitit's; yields the signals it was given."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    calls: list[int] = []

    def requeue(self: SignalHandler, signum: int, frame: object) -> None:
        calls.append(signum)
        if self.decline:
            raise UncompletedJobError("max_num_timeout reached")

    monkeypatch.setattr(SignalHandler, "checkpoint_and_try_requeue", requeue)
    handler = SignalHandler.__new__(SignalHandler)
    handler.decline = False
    usr = JobEnvironment._usr_sig()
    previous = signal.signal(usr, handler.checkpoint_and_try_requeue)
    try:
        yield calls
    finally:
        signal.signal(usr, previous)


def test_outside_slurm_nothing_is_requeued(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm.submitit_requeue(INTERRUPTED) is False


def test_without_submitits_handler_nothing_is_requeued(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    previous = signal.signal(JobEnvironment._usr_sig(), signal.SIG_DFL)
    try:
        assert slurm.submitit_requeue(INTERRUPTED) is False
    finally:
        signal.signal(JobEnvironment._usr_sig(), previous)


def test_a_preempted_job_is_handed_to_submitit(in_slurm_job, monkeypatch) -> None:
    monkeypatch.setattr(slurm, "slurm_job_state", lambda job: "RUNNING")
    assert slurm.submitit_requeue(INTERRUPTED) is False
    assert in_slurm_job == [signal.SIGTERM]


def test_a_cancelled_job_is_not_requeued(in_slurm_job, monkeypatch) -> None:
    monkeypatch.setattr(slurm, "slurm_job_state", lambda job: "COMPLETING")
    assert slurm.submitit_requeue(INTERRUPTED) is True
    assert in_slurm_job == []


def test_a_requeue_submitit_declines_is_reported(in_slurm_job, monkeypatch) -> None:
    monkeypatch.setattr(slurm, "slurm_job_state", lambda job: None)  # squeue unavailable
    handler = signal.getsignal(JobEnvironment._usr_sig())
    handler.__self__.decline = True
    assert slurm.submitit_requeue(INTERRUPTED) is True
    assert in_slurm_job == [signal.SIGTERM]


def test_job_state_is_none_without_squeue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert slurm.slurm_job_state("42") is None


def test_jobs_packed_in_one_task_leave_the_requeue_to_the_task(in_slurm_job, monkeypatch) -> None:
    monkeypatch.setattr(slurm, "slurm_job_state", lambda job: "RUNNING")
    with slurm.one_requeue() as requests:
        assert slurm.submitit_requeue(INTERRUPTED) is True  # the job reports and ends
        assert slurm.submitit_requeue(INTERRUPTED) is True
    assert requests == [INTERRUPTED, INTERRUPTED]
    assert in_slurm_job == []  # not requeued yet: the task does it once, afterwards
    assert slurm.submitit_requeue(requests[0]) is False
    assert in_slurm_job == [signal.SIGTERM]
