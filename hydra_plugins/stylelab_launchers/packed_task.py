"""Several sweep jobs in one submitit array task, run as one batch (`jobs_per_task`).

Each job is set up as in a task of its own (its folder, `.hydra` files, log, W&B run), then the
jobs that can share a batch (`stylelab.runner.batch_key`) run together through one VGG
(`batch_jobs`), and each job reports its own result. On a stop signal (at any point: while the
jobs are set up, or while a batch runs) the running batch checkpoints, no further job is set up
and no further batch starts (its jobs end as "not started"), and the task is requeued once; the
requeued task resumes each interrupted job from its own checkpoint, runs the jobs that had not
started, and returns the results of the jobs that had already ended as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, setup_globals

from hydra_plugins.stylelab_launchers.batch_jobs import (
    Batcher,
    Job,
    JobHalves,
    announce,
    run_together,
)
from hydra_plugins.stylelab_launchers.sequential_launcher import job_config
from stylelab.signals import Interrupted, stop_on_signals
from stylelab.slurm import one_requeue, submitit_requeue

log = logging.getLogger(__name__)
Member = tuple[list[str], int]  # a sweep job's overrides and number


class PackedTask:
    """The function of a packed array task: `launcher`'s jobs `members`, batched together."""

    def __init__(self, launcher: Any):
        self.launcher = launcher
        self.done: dict[int, JobReturn] = {}  # jobs that ended (a requeued task keeps them)

    def __call__(self, members: Sequence[Member], singleton_state: dict) -> list[JobReturn | None]:
        import submitit

        Singleton.set_state(singleton_state)
        setup_globals()
        launcher = self.launcher
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
        task_id = submitit.JobEnvironment().job_id
        todo = [(overrides, num) for overrides, num in members if num not in self.done]
        log.info(
            "array task %s runs jobs %s (%s)", task_id, ", ".join(f"#{num}" for _, num in members),
            f"{len(todo)} to run" if len(todo) < len(members) else "all to run",
        )  # fmt: skip
        halves = JobHalves(launcher.hydra_context, launcher.config, launcher.task_function)
        waiting: dict[int, JobReturn] = {}  # interrupted jobs, returned if not requeued
        with stop_on_signals() as received, one_requeue() as requests:
            report = partial(self._report, halves, requests=requests, waiting=waiting)

            def run(place: object, batch: list[Job]) -> None:
                announce(batch)
                run_together(batch)
                for job in batch:
                    report(job)

            batcher = Batcher(halves, run, report)  # all of a group in one batch
            for overrides, num in todo:
                if received:  # nothing new is set up after a stop signal
                    break
                batcher.open(
                    job_config(launcher.hydra_context, launcher.config, overrides, num, task_id)
                )
            batcher.finish(received)  # nor does a batch start
        if received and len(self.done) < len(members):  # requeue, unless SLURM or submitit decline
            submitit_requeue(requests[0] if requests else Interrupted(received[0]))
        # None: a job never set up (the task was cancelled first)
        return [self.done.get(num) or waiting.get(num) for _, num in members]

    def _report(
        self, halves: JobHalves, job: Job, requests: list[Interrupted], waiting: dict
    ) -> None:
        asked = len(requests)
        result = halves.close(job)
        if len(requests) > asked:  # interrupted or not started: the requeued task runs it
            waiting[job.num] = result
        else:
            self.done[job.num] = result

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Resubmit this task (with the jobs that ended) when submitit requeues it."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
