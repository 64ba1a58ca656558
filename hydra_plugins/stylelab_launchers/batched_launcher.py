"""A launcher that runs the jobs of a sweep that can share a batch as one batch of images.

`hydra/launcher=batched`: each job is set up as usual (its Hydra folder and files, its config,
its W&B run, its checks: a bad override fails that job alone), then jobs with the same image
shapes, stages, optimiser kind, numerics, device and VGG (`stylelab.runner.batch_key`) are
stepped together, up to `batch_size` at a time, by `stylelab.engine.batch.run_batch`: one VGG
forward and backward per step for the whole batch, each job with its own objective and
optimiser. Each job then writes its own results, finishes its own W&B run and returns its own
value to the sweeper. With `devices=[cuda:0,cuda:1,...]` one worker per device takes batches
from its queue (jobs are dealt to the devices in turn). Stop signals checkpoint every job of
the running batches and end the sweep as the sequential launcher does.

Unlike Hydra's launchers this one runs stylelab's job (`stylelab.run.job_steps`), not an
arbitrary task function: batching needs the job in its two halves.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _save_config,
    configure_log,
    env_override,
    filter_overrides,
    setup_globals,
)
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.stylelab_launchers.sequential_launcher import SequentialLauncher
from stylelab import runner
from stylelab.callbacks import SweepJobs
from stylelab.engine.batch import BatchJob, Outcome, run_batch
from stylelab.engine.observers import ProgressBar
from stylelab.factory import sharing_vgg
from stylelab.signals import stop_on_signals

log = logging.getLogger(__name__)


class _Job:
    """A sweep job between its two halves: set up, waiting for its batch, then reported.

    (Plain classes here: Hydra's plugin scan loads this module in a way dataclasses cannot.)
    """

    def __init__(self, num: int, config: DictConfig, result: JobReturn):
        self.num, self.config, self.result = num, config, result
        self.steps: Any = None  # stylelab.runner.JobSteps[float]
        self.request: BatchJob | None = None  # its synthesis, until it has run
        self.outcome: Any = None
        self.done = False


class _Worker:
    """One device's thread: runs the batches put on its queue."""

    def __init__(self, device: str | None):
        self.device = device
        self.batches: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None


class BatchedLauncher(SequentialLauncher):
    """Runs compatible jobs as batches of up to `batch_size` images, on `devices` in parallel."""

    def __init__(self, batch_size: int = 16, devices: Sequence[str] | None = None) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"hydra.launcher.batch_size={batch_size}: use 1 or more")
        self.batch_size = int(batch_size)
        self.explicit = bool(devices)  # else only jobs with device=auto are placed
        self.devices: list[str | None] = [str(d) for d in devices] if devices else default_devices()

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = SweepJobs(sweep_dir)
        numbered = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        jobs.plan(numbered)
        log.info(
            "Launching %d jobs in batches of up to %d on %s", len(numbered), self.batch_size,
            ", ".join(d or "the configured device" for d in self.devices),
        )  # fmt: skip
        self.returns: dict[int, JobReturn] = {}
        self.finished: queue.Queue = queue.Queue()
        self.in_flight = 0
        workers = [_Worker(device) for device in self.devices]
        runner.progress_bars = False  # one bar per batch instead of one per job
        with stop_on_signals() as received, sharing_vgg():
            try:
                for worker in workers:
                    worker.thread = threading.Thread(
                        target=self._work, args=(worker,), daemon=True, name=f"batch-{worker.device}"
                    )  # fmt: skip
                    worker.thread.start()
                pending: dict[tuple[int, tuple], list[_Job]] = {}
                for index, (num, overrides) in enumerate(numbered):
                    if received:
                        break
                    place = index % len(workers)
                    job = self._open(num, overrides, workers[place].device)
                    jobs.started(num)
                    if job.request is None:
                        self._close(job)
                        continue
                    key = (place, job.request.key)
                    pending.setdefault(key, []).append(job)
                    if len(pending[key]) == self.batch_size:
                        self._submit(workers[place], pending.pop(key))
                    self._collect(wait=self.in_flight > 2 * len(workers))
                for (place, _), batch in pending.items():
                    self._submit(workers[place], batch)
                while self.in_flight:
                    self._collect(wait=True)
            except KeyboardInterrupt:  # the signal repeated after the grace period
                pass
            finally:
                runner.progress_bars = True
                for worker in workers:
                    worker.batches.put(None)
            if received:
                self.stop(jobs, received[0])
        return [self.returns[num] for num, _ in numbered if num in self.returns]

    # -- the two halves of a job, in this (the main) thread ------------------------------------

    def _open(self, num: int, overrides: list[str], device: str | None) -> _Job:
        """Set the job up as Hydra's `run_job` does, then run it to its synthesis."""
        assert self.hydra_context is not None and self.config is not None
        log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = num
            if device is not None and (self.explicit or config.get("device") == "auto"):
                config.device = device
        HydraConfig.instance().set_config(config)
        output_dir = os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        HydraConfig.instance().set_config(config)
        result = JobReturn()
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        result.cfg, result.hydra_cfg = task_cfg, copy.deepcopy(HydraConfig.instance().cfg)
        result.overrides = OmegaConf.to_container(config.hydra.overrides.task)  # type: ignore[assignment]
        result.working_dir = os.getcwd()
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
            _save_config(task_cfg, "config.yaml", hydra_output)
            _save_config(result.hydra_cfg, "hydra.yaml", hydra_output)
            _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)
        from stylelab.run import job_steps

        job = _Job(num, config, result)
        with env_override(result.hydra_cfg.hydra.job.env_set):
            self.hydra_context.callbacks.on_job_start(
                config=config, task_function=self.task_function
            )
            job.steps = job_steps(task_cfg)
            self._advance(job, None)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return job

    def _advance(self, job: _Job, outcome: Outcome | None) -> None:
        """Send the job its synthesis's outcome: it yields its synthesis or ends."""
        try:
            if isinstance(outcome, BaseException):
                job.request = job.steps.throw(outcome)
            else:
                job.request = job.steps.send(outcome)
        except StopIteration as stop:
            job.request, job.done = None, True
            job.result.return_value, job.result.status = stop.value, JobStatus.COMPLETED
        except Exception as error:  # as run_job: the sweep goes on, the job reports FAILED
            job.request, job.done = None, True
            job.result.return_value, job.result.status = error, JobStatus.FAILED

    def _close(self, job: _Job) -> None:
        """The job's second half (its results, W&B finish, return value), in its Hydra context."""
        assert self.hydra_context is not None and self.config is not None
        HydraConfig.instance().set_config(job.config)
        configure_log(job.config.hydra.job_logging, job.config.hydra.verbose)
        try:
            with env_override(job.result.hydra_cfg.hydra.job.env_set):
                while not job.done:
                    if job.request is not None and job.outcome is None:  # a second synthesis
                        job.outcome = _outcome_of(job.request)
                    outcome, job.outcome = job.outcome, None
                    self._advance(job, outcome)
            job.result.task_name = JobRuntime.instance().get("name")
            for handler in logging.getLogger().handlers:
                handler.flush()
            self.hydra_context.callbacks.on_job_end(config=job.config, job_return=job.result)
            self.returns[job.num] = job.result
        finally:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    # -- batches, on the workers' threads ------------------------------------------------------

    def _submit(self, worker: _Worker, batch: list[_Job]) -> None:
        first = batch[0].request
        assert first is not None
        bar = ProgressBar(
            f"batch of {len(batch)}" + (f" on {worker.device}" if worker.device else "")
        )
        first.observers = [*first.observers, bar]
        log.info("batch of %d: jobs %s", len(batch), ", ".join(f"#{job.num}" for job in batch))
        self.in_flight += 1
        worker.batches.put(batch)

    def _work(self, worker: _Worker) -> None:
        while (batch := worker.batches.get()) is not None:
            started = time.perf_counter()
            try:
                outcomes = run_batch([job.request for job in batch])  # type: ignore[misc]
            except Exception as error:  # the batch as a whole could not run: each job says why
                outcomes = [error] * len(batch)
            for job, outcome in zip(batch, outcomes, strict=True):
                job.outcome = outcome
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


def _outcome_of(request: BatchJob) -> Outcome:
    try:
        return request.run()
    except Exception as error:
        return error
