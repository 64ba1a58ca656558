"""SLURM jobs started by submitit: requeue an interrupted run instead of ending it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from stylelab.signals import Interrupted

log = logging.getLogger("stylelab")
_deferred: list[list[Interrupted]] = []  # the requests of the open `one_requeue` block


@contextmanager
def one_requeue() -> Iterator[list[Interrupted]]:
    """Jobs run together in one SLURM task (packed): `submitit_requeue` only records them.

    Inside the block an interrupted job does not requeue the task (that would end the process
    before its batch-mates have checkpointed): its request is added to the yielded list and it
    ends as a job that was not requeued. Afterwards the caller requeues the task once with
    `submitit_requeue(requests[0])`.
    """
    requests: list[Interrupted] = []
    _deferred.append(requests)
    try:
        yield requests
    finally:
        _deferred.pop()


def submitit_requeue(error: Interrupted) -> bool:
    """In a submitit SLURM job: hand over to submitit, which requeues the job and exits.

    submitit's handler for its preemption signal (USR2) is back in place once the loop has
    checkpointed; calling it resubmits this Hydra job (the launcher's `checkpoint()`), runs
    `scontrol requeue` and exits. The requeued job runs in the same job folder, where
    `stylelab.outputs.was_interrupted` makes it resume. A job that is being cancelled (`scancel`:
    SIGTERM, then SIGKILL) is not requeued. Returns False outside such a job, True when it was
    not requeued (the reason logged) or when the request was left to the task (`one_requeue`).
    """
    if _deferred:
        _deferred[-1].append(error)
        return True
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or not job:
        return False
    from submitit.core.job_environment import JobEnvironment, SignalHandler
    from submitit.core.utils import UncompletedJobError

    handler = signal.getsignal(JobEnvironment._usr_sig())
    if (
        not callable(handler)
        or getattr(handler, "__func__", None) is not SignalHandler.checkpoint_and_try_requeue
    ):
        return False
    state = slurm_job_state(job)
    if state not in (None, "RUNNING"):  # e.g. COMPLETING: scancel, not a preemption
        log.error("SLURM job %s is %s (cancelled): not requeued", job, state)
        return True
    log.info("SLURM job %s: requeueing it through submitit", job)
    try:
        handler(error.signum, None)  # requeues, then sys.exit
    except (UncompletedJobError, subprocess.SubprocessError) as declined:
        log.error("SLURM job %s not requeued: %s", job, declined)
        return True
    return False


def slurm_job_state(job: str) -> str | None:
    """The job's state as squeue reports it (RUNNING, COMPLETING, ...), None if unknown."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
