"""A launcher that runs the jobs of a sweep that can share a batch as one batch of images.

`hydra/launcher=batched`: each job is set up as usual (its Hydra folder and files, its config,
its W&B run, its checks: a bad override fails that job alone), then jobs with the same image
shapes, stages, optimiser kind, numerics, device and VGG (`stylelab.runner.batch_key`) are
stepped together, up to `batch_size` at a time, by `stylelab.engine.batch.run_batch`: one VGG
forward and backward per step for the whole batch, each job with its own objective and
optimiser. Each job then writes its own results, finishes its own W&B run and returns its own
value to the sweeper. With `devices=[cuda:0,cuda:1,...]` one worker per device takes batches
from its queue (jobs are dealt to the devices in turn). Stop signals checkpoint every job of
the running batches and end the sweep as the sequential launcher does: no further batch starts
(queued or still filling), and its jobs are reported as never started.

Unlike Hydra's launchers this one runs stylelab's job (`stylelab.run.job_steps`), not an
arbitrary task function: batching needs the job in its two halves.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence

from hydra.core.utils import JobReturn
from omegaconf import DictConfig, open_dict

from hydra_plugins.stylelab_launchers.batch_jobs import (
    Batcher,
    Job,
    JobHalves,
    announce,
    not_started,
    run_together,
)
from hydra_plugins.stylelab_launchers.launcher_options import checked_batch_size, checked_devices
from hydra_plugins.stylelab_launchers.sequential_launcher import SequentialLauncher
from stylelab.signals import stop_on_signals

log = logging.getLogger(__name__)


class _Worker:
    """One device's thread: runs the batches put on its queue."""

    def __init__(self, device: str | None):
        self.device = device
        self.batches: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None


class BatchedLauncher(SequentialLauncher):
    """Runs compatible jobs as batches of up to `batch_size` images, on `devices` in parallel."""

    def __init__(self, batch_size: int = 16, devices: Sequence[str] | str | None = None) -> None:
        super().__init__()
        self.batch_size = checked_batch_size(batch_size)
        listed = checked_devices(devices)
        self.explicit = bool(listed)  # else only jobs with device=auto are placed
        self.devices: list[str | None] = [*listed] if listed else default_devices()
        self.received: list[int] = []  # the stop signal, once one arrived (the workers look)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        jobs, numbered = self.plan(job_overrides, initial_job_idx)
        log.info(
            "Launching %d jobs in batches of up to %d on %s", len(numbered), self.batch_size,
            ", ".join(d or "the configured device" for d in self.devices),
        )  # fmt: skip
        assert self.hydra_context is not None and self.task_function is not None
        assert self.config is not None  # all three set by setup()
        self.halves = JobHalves(self.hydra_context, self.config, self.task_function)
        self.returns: dict[int, JobReturn] = {}
        self.finished: queue.Queue = queue.Queue()
        self.in_flight = 0
        workers = [_Worker(device) for device in self.devices]
        submit = lambda place, batch: self._submit(workers[place], batch)  # noqa: E731
        batcher = Batcher(self.halves, submit, self._close, self.batch_size, jobs.started)
        with stop_on_signals() as received:
            self.received = received
            try:
                for worker in workers:
                    worker.thread = threading.Thread(
                        target=self._work, args=(worker,), daemon=True, name=f"batch-{worker.device}"
                    )  # fmt: skip
                    worker.thread.start()
                for index, (num, overrides) in enumerate(numbered):
                    if received:
                        break
                    place = index % len(workers)
                    config = self.compose(num, overrides)
                    if config is None:
                        self.returns[num] = self.refused(jobs, num, overrides)
                        continue
                    batcher.open(self._placed(config, workers[place].device), place)
                    self._collect(wait=self.in_flight > 2 * len(workers))
                batcher.finish(received)  # nothing starts after a stop signal
                while self.in_flight:
                    self._collect(wait=True)
            except KeyboardInterrupt:  # the signal repeated after the grace period
                pass
            finally:
                for worker in workers:
                    worker.batches.put(None)
            if received:
                self.stop(jobs, received[0])
        return self.in_order(self.returns)

    # -- the two halves of a job, in this (the main) thread ------------------------------------

    def _placed(self, config: DictConfig, device: str | None) -> DictConfig:
        """`config` on its worker's device (with `devices=`, or for a job with device=auto)."""
        with open_dict(config):
            if device is not None and (self.explicit or config.get("device") == "auto"):
                config.device = device
        return config

    def _close(self, job: Job) -> None:
        """The job's second half (its results, W&B finish, return value)."""
        self.returns[job.num] = self.halves.close(job)

    # -- batches, on the workers' threads ------------------------------------------------------

    def _submit(self, worker: _Worker, batch: list[Job]) -> None:
        announce(batch, f" on {worker.device}" if worker.device else "")
        self.in_flight += 1
        worker.batches.put(batch)

    def _work(self, worker: _Worker) -> None:
        while (batch := worker.batches.get()) is not None:
            started = time.perf_counter()
            if self.received:  # a batch queued before the stop signal
                not_started(batch, self.received[0])
            else:
                run_together(batch)
            self.finished.put((batch, time.perf_counter() - started))

    def _collect(self, wait: bool) -> None:
        """Report the jobs of finished batches (waiting for one if `wait`)."""
        while self.in_flight:
            try:
                # A short timeout: this thread must keep running Python for signal handlers.
                batch, seconds = self.finished.get(timeout=0.2 if wait else 0)
            except queue.Empty:
                if wait:
                    continue
                return
            self.in_flight -= 1
            log.info("batch of %d done in %.1f s", len(batch), seconds)
            for job in batch:
                self._close(job)
            wait = False


def default_devices() -> list[str | None]:
    """Every visible GPU when there are several; else one worker on the jobs' own device."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] if count > 1 else [None]
