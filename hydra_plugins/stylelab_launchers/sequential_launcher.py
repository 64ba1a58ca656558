"""A launcher that runs the jobs one after another in this process and stops on Ctrl-C/SIGTERM.

Hydra's basic launcher starts every remaining job after one was interrupted. This one holds
the stop signals for the whole sweep (`stylelab.signals.stop_on_signals`; a job's own block
inside it gets the same signal): the running job checkpoints, no further job starts, the
multirun-end callbacks run (`stylelab.callbacks.SweepSummary` lists what finished, what was
interrupted with its `resume=` line and what never started, from `<sweep dir>/jobs.json`) and
the command exits 128 + the signal (130 for Ctrl-C). `conf/config.yaml` makes it the default.

A sweep folder that already holds jobs is extended, never rewritten (`sweep_plan.number_jobs`):
finished jobs with the same overrides are skipped, new ones get new numbers; a job whose folder
holds an earlier run it cannot continue is refused before Hydra writes a file there.

Each job's config is composed once (`composed_once`): the sweeper's check keeps it for the
launcher. Hydra API: the public `Launcher` and `ConfigLoader` interfaces, `HydraContext` and
`hydra.core.utils` (`run_job`, `setup_globals`, `configure_log`, `filter_overrides`). No private
(`hydra._internal`) module is used by the stylelab launchers; `batch_jobs` says what `run_job`
could not give.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from hydra_plugins.stylelab_launchers.composed_once import compose_once
from hydra_plugins.stylelab_launchers.sweep_plan import earlier_run, number_jobs, skipped_result
from stylelab.callbacks import SweepJobs
from stylelab.pareto import failed_return
from stylelab.run_folder import Status
from stylelab.signals import stop_on_signals

log = logging.getLogger(__name__)


class SequentialLauncher(Launcher):
    """Hydra's basic launcher, stopping the whole sweep at the first stop signal."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        compose_once(hydra_context)  # the sweeper's check composes each job: keep it for us

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        jobs, numbered = self.plan(job_overrides, initial_job_idx)
        log.info("Launching %d jobs locally", len(numbered))
        runs: dict[int, JobReturn] = {}
        with stop_on_signals() as received:
            try:
                for num, overrides in numbered:
                    if received:
                        break
                    config = self.compose(num, overrides)
                    if config is None:
                        runs[num] = self.refused(jobs, num, overrides)
                        continue
                    jobs.started(num)
                    runs[num] = self.run_one(config)
            except KeyboardInterrupt:  # the signal repeated after the grace period
                pass
            if received:
                self.stop(jobs, received[0])
        return self.in_order(runs)

    def plan(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> tuple[SweepJobs, list[tuple[int, list[str]]]]:
        """Set up Hydra's logging and the sweep folder; number the jobs (after the jobs already
        in the folder, skipping those that finished there) and record them in
        `<sweep dir>/jobs.json`."""
        setup_globals()
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = SweepJobs(sweep_dir)
        self.order = number_jobs(sweep_dir, jobs.data["jobs"], job_overrides, initial_job_idx)
        numbered = [(num, o) for num, o in self.order if isinstance(num, int)]
        skipped = [(folder.name, o) for folder, o in self.order if isinstance(folder, Path)]
        for name, overrides in skipped:
            shown = " ".join(filter_overrides(overrides))
            log.info("\tskipped %s: already finished in job %s", shown, name)
        first = not getattr(self, "_planned", False)  # this command's first launch
        self._planned = True
        jobs.plan(numbered, skipped, first)
        return jobs, numbered

    def in_order(self, returns: dict[int, JobReturn]) -> list[JobReturn]:
        """One result per job given to `launch`, in its order, as sweepers expect (a skipped job:
        its finished twin's); jobs a stop signal kept from starting have none."""
        assert self.config is not None
        task_name = self.config.hydra.job.name
        return [
            skipped_result(
                job, overrides, task_name, self.config.get("sweep_returns", "final/total")
            )
            if isinstance(job, Path)
            else returns[job]
            for job, overrides in self.order
            if isinstance(job, Path) or job in returns
        ]

    def compose(self, num: int, overrides: list[str]) -> DictConfig | None:
        """Job `num`'s config; None (logged) if its folder holds a run it cannot continue."""
        assert self.hydra_context is not None and self.config is not None
        log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        config = job_config(self.hydra_context, self.config, overrides, num)
        folder = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        earlier = earlier_run(folder)
        if earlier in (None, Status.INTERRUPTED, Status.NOT_STARTED):
            return config
        log.error(
            "job #%d not run: %s already holds a %s run, left as it is; give each job its own "
            "folder (hydra.sweep.subdir=${hydra.job.num}), or another hydra.sweep.dir",
            num, folder, earlier,
        )  # fmt: skip
        return None

    def refused(self, jobs: SweepJobs, num: int, overrides: list[str]) -> JobReturn:
        """The result of a job that was not run (its folder holds another run)."""
        assert self.config is not None
        jobs.refused(num)
        return JobReturn(
            overrides=overrides,
            task_name=self.config.hydra.job.name,
            status=JobStatus.COMPLETED,
            _return_value=failed_return(self.config.get("sweep_returns", "final/total")),
        )

    def run_one(self, sweep_config: DictConfig) -> JobReturn:
        assert self.hydra_context is not None and self.config is not None
        assert self.task_function is not None
        try:
            return run_job(
                hydra_context=self.hydra_context,
                task_function=self.task_function,
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
        finally:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    def stop(self, jobs: SweepJobs, signum: int) -> None:
        """End the sweep now: record why, run the multirun-end callbacks, exit 128 + signal."""
        assert self.hydra_context is not None and self.config is not None
        jobs.stopped(signum)
        self.hydra_context.callbacks.on_multirun_end(config=self.config)
        sys.exit(128 + signum)  # reached only without stylelab's SweepSummary callback


def job_config(
    hydra_context: HydraContext,
    config: DictConfig,
    overrides: Sequence[str],
    num: int,
    job_id: str | int | None = None,
) -> DictConfig:
    """The composed config of sweep job `num` (`hydra.job.num`; `hydra.job.id`: `job_id`,
    by default the number)."""
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.num = num
        sweep_config.hydra.job.id = num if job_id is None else job_id
    return sweep_config
