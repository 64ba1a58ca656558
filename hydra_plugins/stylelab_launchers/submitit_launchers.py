"""submitit launchers that wait for every job: a job that dies does not stop the sweep.

The plugin's `launch()` ends with `[job.results()[0] for job in jobs]`, which raises on the first
job that left no result (killed with `scancel --signal=KILL`, out of memory, node failure), before
the other jobs end and before the `on_multirun_end` callbacks run. These subclasses wrap the jobs
the executor returns: a dead job becomes a completed `JobReturn` with return value inf, one per
objective of `sweep_returns` (what a failed run returns in a multirun) plus an error line naming the cluster job, its state and the
job folder. `jobs_per_task` packs several sweep jobs into each array task, run as one batch
(`packed_task`). `conf/hydra/launcher/{slurm,local}.yaml` point `_target_` here.

The plugin builds its executor and submits inside `launch()`, with no hook between the two, so
`WaitForEveryJob.launch` is the plugin's `launch` written out (`executor()`, as the plugin makes
the executor from `hydra.launcher`'s parameters; `submit()`, the array tasks): a plugin upgrade
that changes how it builds the executor must be followed here. The tasks still run the plugin's
own `__call__` (one job) or `PackedTask` (several).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra.types import HydraContext
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as plugin
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.stylelab_launchers.packed_task import Member, PackedTask
from hydra_plugins.stylelab_launchers.sequential_launcher import job_config
from stylelab.outputs import RunFolder, write_json
from stylelab.pareto import failed_return, sweep_return
from stylelab.run_folder import SUMMARY_FILE, Status
from stylelab.swept import override_key

log = logging.getLogger(__name__)
POLL_S = 10.0  # ask the cluster (sacct) about unfinished jobs at least this often


class WatchedTask:
    """A submitted array task (one sweep job, or `jobs_per_task` of them packed) whose
    `returns()`, one `JobReturn` per job, waits for it to end and never raises."""

    def __init__(self, job: Any, launcher: WaitForEveryJob, members: list[Member], packed: bool):
        self.job, self.launcher, self.members, self.packed = job, launcher, members, packed
        self._returns: list[JobReturn] | None = None

    def returns(self) -> list[JobReturn]:
        if self._returns is not None:
            return self._returns
        next_check = time.monotonic() + POLL_S
        while not self.job.done(force_check=time.monotonic() >= next_check):
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + POLL_S
            time.sleep(1)
        try:
            result = self.job.results()[0]
            returns = list(result) if self.packed else [result]
        except Exception as error:  # no result (killed) or an error outside the task function
            returns = [self.launcher.dead_job(self.job, o, num, error) for o, num in self.members]
        self._returns = [  # None: a packed job the cancelled task never set up
            given or self.launcher.never_started(self.job, overrides, num)
            for given, (overrides, num) in zip(returns, self.members, strict=True)
        ]
        return self._returns


class WatchedJob:
    """One sweep job of a watched task, as the plugin's `launch()` reads it: `results()`."""

    def __init__(self, task: WatchedTask, index: int):
        self.task, self.index = task, index

    def results(self) -> list[JobReturn]:
        return [self.task.returns()[self.index]]


class WaitForEveryJob:
    """Mixin for the plugin's launchers: every job is waited for; a dead one returns inf.

    With `jobs_per_task` K > 1, K sweep jobs share each array task, run as one batch
    (`packed_task.PackedTask`); each still gets its own `JobReturn`, in job order.
    """

    _EXECUTOR: str
    config: DictConfig | None
    hydra_context: HydraContext | None

    def __init__(self, jobs_per_task: int = 1, **params: Any) -> None:
        super().__init__(**params)
        if int(jobs_per_task) < 1:
            raise ValueError(f"hydra.launcher.jobs_per_task={jobs_per_task}: use 1 or more")
        self.jobs_per_task = int(jobs_per_task)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """The plugin's `launch`, submitting through `submit` (packed, watched) instead."""
        assert self.config is not None
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, self.config.hydra.sweep.dir)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        members: list[Member] = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            members.append((list(overrides), num))
        return [job.results()[0] for job in self.submit(self.executor(), members)]

    def executor(self) -> Any:
        """The submitit executor of `hydra.launcher`'s parameters, as the plugin makes it."""
        import submitit

        params: dict[str, Any] = self.params  # type: ignore[attr-defined]
        init_keys = {"max_num_timeout"}
        init_params = {"folder": params["submitit_folder"]}
        init_params.update(
            {f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k in init_keys}
        )
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            k if k in base else f"{self._EXECUTOR}_{k}": v
            for k, v in params.items() if k not in init_keys | {"submitit_folder"}
        })  # fmt: skip
        return executor

    def submit(self, executor: Any, members: list[Member]) -> list[WatchedJob]:
        """Submit the sweep's jobs (`jobs_per_task` to an array task); one watched job each."""
        size = self.jobs_per_task
        packs = [members[i : i + size] for i in range(0, len(members), size)]
        state = Singleton.get_state()
        if size == 1:  # the plugin's own task: overrides, dir key, num, id, singleton state
            nums = [num for _, num in members]
            tasks = executor.map_array(
                self, [o for o, _ in members], ["hydra.sweep.dir"] * len(nums), nums,
                [f"job_id_for_{num}" for num in nums], [state] * len(nums),
            )  # fmt: skip
        else:
            log.info("%d jobs in %d array tasks of up to %d", len(members), len(packs), size)
            tasks = executor.map_array(PackedTask(self), packs, [state] * len(packs))
        watched = [
            WatchedTask(task, self, pack, packed=size > 1)
            for task, pack in zip(tasks, packs, strict=True)
        ]
        return [WatchedJob(task, i) for task in watched for i in range(len(task.members))]

    def dead_job(self, job: Any, overrides: list[str], num: int, error: Exception) -> JobReturn:
        """The `JobReturn` of sweep job `num` of array task `job`, which ended without a
        result; logs why. A job that finished before its task died returns its final total."""
        job_dir = self.job_dir(overrides, num, job.job_id)
        summary = RunFolder(job_dir).read_summary()
        if summary.get("status") == Status.FINISHED:
            log.info("job #%d had finished before its task %s ended", num, job.job_id)
            return self.job_return(overrides, job_dir, sweep_return(summary, self.returns()))
        self.hydra_folder(job_dir, overrides)
        where = "SLURM job" if self._EXECUTOR == "slurm" else f"{self._EXECUTOR} job"
        log.error(
            "job #%d (%s %s) died: state %s, %s; job folder %s; submitit log %s",
            num,
            where,
            job.job_id,
            job.state,
            reason(error),
            job_dir,
            job.paths.stderr,
        )
        return self.job_return(overrides, job_dir, failed_return(self.returns()))

    def never_started(self, job: Any, overrides: list[str], num: int) -> JobReturn:
        """The `JobReturn` of packed job `num`, which its task (cancelled) never set up."""
        job_dir = self.job_dir(overrides, num, job.job_id)
        if not (job_dir / SUMMARY_FILE).exists():
            self.hydra_folder(job_dir, overrides)
            error = f"its array task {job.job_id} was stopped before it was set up"
            write_json(job_dir / SUMMARY_FILE, {"status": Status.NOT_STARTED, "error": error})
        return self.job_return(overrides, job_dir, failed_return(self.returns()))

    @staticmethod
    def hydra_folder(job_dir: Path, overrides: list[str]) -> None:
        """A folder for a job that never started: the end-of-sweep summary names it."""
        hydra_dir = job_dir / ".hydra"
        if not hydra_dir.is_dir():
            hydra_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")

    def returns(self) -> Any:
        """What the sweep's jobs return to its sweeper (`sweep_returns`)."""
        assert self.config is not None
        return self.config.get("sweep_returns", "final/total")

    def job_return(self, overrides: list[str], job_dir: Path, value: Any) -> JobReturn:
        assert self.config is not None
        return JobReturn(
            overrides=overrides,
            working_dir=str(job_dir),
            task_name=self.config.hydra.job.name,
            status=JobStatus.COMPLETED,
            _return_value=value,
        )

    def job_dir(self, overrides: Sequence[str], num: int, job_id: str) -> Path:
        """The job's output folder, as Hydra computes it inside the job."""
        assert self.config is not None and self.hydra_context is not None
        with contextlib.suppress(Exception):
            cfg = job_config(self.hydra_context, self.config, overrides, num, job_id)
            return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        return Path(str(self.config.hydra.sweep.dir)) / str(num)


def reason(error: Exception) -> str:
    """One line on why a job has no result: the exception it raised, or "no result file"."""
    from submitit.core.utils import FailedJobError

    if isinstance(error, FailedJobError):  # the trace sits between two rulers of dashes
        parts = str(error).split("-" * 22)
        lines = [line.strip() for line in (parts[1] if len(parts) > 2 else "").splitlines()]
        return next((line for line in reversed(lines) if line), "it raised an exception")
    return "no result file: killed, out of memory or lost with its node"


class SubmissionError(CompactHydraException):
    """sbatch refused the sweep; Hydra prints the message alone (one line, no traceback)."""


def submission_problem(error: Exception, gpus_per_node: Any) -> str | None:
    """One line for an sbatch refusal we can explain, else None (the error is raised as is)."""
    text = str(error)
    if "Invalid generic resource" in text or re.search(r"\bgres\b", text, re.IGNORECASE):
        return (
            f"sbatch refused the GPU request (hydra.launcher.gpus_per_node={gpus_per_node}): "
            "this cluster or partition has no GPUs; set hydra.launcher.gpus_per_node=0 for CPU "
            "jobs, or choose a GPU partition with hydra.launcher.partition=<name>"
        )
    return None


class SlurmLauncher(WaitForEveryJob, plugin.SlurmLauncher):
    """`submitit_slurm`, waiting for every job, with one W&B service per job outside its step
    (where a job of the sweep may log to W&B)."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        setup = self.params.get("setup")
        logger = OmegaConf.select(self.config, "logger.name") if self.config is not None else None
        if may_log_to_wandb(str(logger or "wandb"), job_overrides):  # unknown: it may
            self.params["setup"] = [*(setup or []), *wandb_service_setup(sys.executable)]
        try:
            return super().launch(job_overrides, initial_job_idx)
        except Exception as error:
            message = submission_problem(error, self.params.get("gpus_per_node"))
            if message is None:
                raise
            raise SubmissionError(message) from None
        finally:
            self.params["setup"] = setup


def may_log_to_wandb(logger_name: str, job_overrides: Iterable[Sequence[str]]) -> bool:
    """Whether a job of the sweep may log to W&B: the sweep's composed `logger.name` is "wandb",
    or a job's override of `logger` or `logger.*` may change it. Overrides that select or set
    the composed name itself (`logger=none`, `logger.name=none` in a `logger=none` sweep: the
    command's own overrides, which every job repeats) change nothing."""
    if logger_name == "wandb":
        return True
    for override in itertools.chain.from_iterable(job_overrides):
        prefixed, _, value = (part.strip() for part in override.partition("="))
        key = override_key(prefixed)
        if key != "logger" and not key.startswith("logger."):
            continue
        sets_composed_name = key in ("logger", "logger.name") and value == logger_name
        if prefixed.startswith("~") or not sets_composed_name:
            return True
    return False


def wandb_service_setup(python: str) -> list[str]:
    """Batch-script lines that start the job's wandb-core before (and outside) its job step.

    SLURM delivers `scancel --signal=TERM` and preemption's SIGTERM to every process of the job
    steps, and wandb-core exits at once on SIGTERM, losing what it has not written yet
    (wandb/wandb#9963), so the run could not checkpoint into W&B. A detached wandb-core started
    by the batch script is not in the step; `WANDB_SERVICE` points the job at it. If it cannot
    start, the job starts its own as usual.
    """
    py = shlex.quote(python)
    return [
        "# stylelab: the job's W&B service, outside the job step (SIGTERM to the step spares it)",
        "unset WANDB_SERVICE",
        f"if WANDB_SERVICE=$({py} -m wandb beta core start --idle-timeout 30m 2>/dev/null); then",
        "  export WANDB_SERVICE",
        f'  trap "{py} -m wandb beta core stop >/dev/null 2>&1" EXIT',
        "  trap 'exit 143' TERM",
        "else",
        "  unset WANDB_SERVICE",
        "fi",
    ]


class LocalLauncher(WaitForEveryJob, plugin.LocalLauncher):
    """`submitit_local`, waiting for every job."""
