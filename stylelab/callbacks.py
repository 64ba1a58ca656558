"""Hydra callbacks: a run's folder is checked before Hydra writes to it; a multirun's summary."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from stylelab.errors import StyleLabError
from stylelab.outputs import write_json
from stylelab.pareto import number, pareto_optimal, return_keys
from stylelab.report import IGNORED_KEYS, Job, label, parse_overrides, swept_keys
from stylelab.run_folder import Status, job_folders, read_overrides, read_summary, status_of
from stylelab.swept import sweep_keys

log = logging.getLogger("stylelab")
JOBS_FILE = "jobs.json"  # a sweep's job list, written by stylelab's sequential launcher
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


class RunFolderGuard(Callback):
    """Before Hydra writes a single run's files: hold its folder and check the run can start.

    A folder held by a live run or used by an earlier one, or a `resume=` that would change the
    run or has no usable checkpoint, ends the command with one line before anything is written
    (`stylelab.resume.prepare_run`; a multirun's jobs run it themselves).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from stylelab.resume import prepare_run  # the rules, shared with the job

        try:
            prepare_run(config, Path(str(config.hydra.run.dir)), list(config.hydra.overrides.task))
        except (StyleLabError, OSError) as error:
            exit_with_error(str(error))


def exit_with_error(message: str) -> None:
    """Log one error line on stderr, as the job's log would (not set up yet), and exit 1."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    early = logging.getLogger("stylelab.start")
    early.propagate = False
    early.addHandler(handler)
    early.error("%s", message)
    sys.exit(1)


class SweepJobs:
    """`<sweep dir>/jobs.json`: the jobs a launcher was given, which started, what stopped it."""

    def __init__(self, sweep_dir: Path):
        self.path = Path(sweep_dir) / JOBS_FILE
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {"jobs": [], "stopped_by": None}

    def plan(
        self,
        jobs: list[tuple[int, list[str]]],
        skipped: Sequence[tuple[str, list[str]]] = (),
        first: bool = True,
    ) -> None:
        """A launch of `jobs` begins (a sweeper may launch several; a re-run of a stopped sweep
        in its folder replaces the earlier entries of the same jobs). `skipped`: (finished
        job, overrides) of the jobs not run again; `first`: the command's first launch."""
        nums = {num for num, _ in jobs}
        kept = [job for job in self.data["jobs"] if job["num"] not in nums]
        self.data["jobs"] = kept + [
            {"num": num, "overrides": o, "started": False} for num, o in jobs
        ]
        if first:
            self.data["skipped"], self.data["refused"] = [], []
        self.data["skipped"] = self.data.get("skipped", []) + [
            {"job": name, "overrides": o} for name, o in skipped
        ]
        self.data["stopped_by"] = None
        write_json(self.path, self.data)

    def refused(self, num: int) -> None:
        """Job `num` was not run: its folder holds a run it cannot continue."""
        self.data["refused"] = [*self.data.get("refused", []), num]
        write_json(self.path, self.data)

    def started(self, num: int) -> None:
        for job in self.data["jobs"]:
            job["started"] = job["started"] or job["num"] == num
        write_json(self.path, self.data)

    def stopped(self, signum: int) -> None:
        self.data["stopped_by"] = signal.Signals(signum).name
        write_json(self.path, self.data)

    def never_started(self) -> list[dict[str, Any]]:
        return [job for job in self.data["jobs"] if not job["started"]]

    def exit_code(self) -> int | None:
        """128 + the signal that stopped the sweep (130 for SIGINT), None if none did."""
        stopped = self.data.get("stopped_by")
        return 128 + signal.Signals[stopped].value if stopped else None


def collect_summaries(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(job folder, summary) for every job folder under a multirun folder, in job order (a job
    without a readable summary.json: `Status.KILLED`)."""
    return [(job, read_summary(job)) for job in job_folders(sweep_dir)]


def job_line(job: Path, summary: dict[str, Any], settings: str = "") -> tuple[int, str]:
    """(log level, line) for one job of the summary; `settings`: e.g. " [style_weight=1e+06]"."""
    status, error = status_of(summary), summary.get("error", "see its run.log")
    total = summary.get("final/total")
    name = f"  job {job.name}"
    if status == Status.FINISHED and isinstance(total, float):
        return logging.INFO, f"{name}: {status}, final total {total:.4g}{settings}"
    if status == Status.INTERRUPTED and summary.get("checkpoint", True):
        resume = f"continue with: python -m stylelab.run resume={job}"
        return logging.ERROR, f"{name}: {status} ({error}){settings}; {resume}"
    if status == Status.INTERRUPTED:
        return logging.ERROR, f"{name}: {status} at once, no checkpoint ({error}){settings}"
    if status == Status.NOT_STARTED:
        return logging.ERROR, f"{name}: {Status.shown(Status.NOT_STARTED)} ({error}){settings}"
    return logging.ERROR, f"{name}: {status}: {error}{settings}"


def job_overrides(job: Path) -> list[str]:
    """The overrides a job folder recorded (`.hydra/overrides.yaml`), [] if unreadable."""
    return read_overrides(job) or []


def settings_of(jobs: list[Path], command_keys: list[str]) -> dict[Path, str]:
    """Each job's swept settings, e.g. " [style_weight=1e+06, layers=approach1]": the keys the
    command sweeps and those whose values differ between the jobs."""
    parsed = [Job(job.name, parse_overrides(job_overrides(job))) for job in jobs]
    keys = list(dict.fromkeys([*command_keys, *swept_keys(parsed)[1]]))
    keys = [key for key in keys if not key.startswith(IGNORED_KEYS)]
    settings = {}
    for path, job in zip(jobs, parsed, strict=True):
        shown = [f"{key}={label(job.overrides[key])}" for key in keys if key in job.overrides]
        settings[path] = f" [{', '.join(shown)}]" if shown else ""
    return settings


def redone(results: list[tuple[Path, dict[str, Any]]]) -> dict[Path, str]:
    """Jobs that did not finish but whose overrides a later job ran to the end: job -> that job."""
    finished: dict[tuple[str, ...], str] = {}
    for job, summary in results:
        if status_of(summary) == Status.FINISHED:
            finished.setdefault(tuple(sorted(job_overrides(job))), job.name)
    return {
        job: finished[key]
        for job, summary in results
        if status_of(summary) != Status.FINISHED
        and (key := tuple(sorted(job_overrides(job)))) in finished
    }


def directions(config: DictConfig) -> list[str]:
    """The sweeper's directions (`minimize`/`maximize`, one per objective); none for a sweeper
    without them (each objective is then minimised)."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    if direction is None or isinstance(direction, str):
        return [direction or "minimize"]
    return [str(d) for d in direction]


def pareto_line(
    results: list[tuple[Path, dict[str, Any]]], keys: list[str], directions: list[str]
) -> str:
    """The sweep's Pareto-optimal finished jobs for the objectives `keys` (`sweep_returns`)."""
    directions = (directions + ["minimize"] * len(keys))[: len(keys)]
    signs = [-1.0 if d == "maximize" else 1.0 for d in directions]
    done = [(job, summary) for job, summary in results if status_of(summary) == Status.FINISHED]
    points = [
        [s * number(summary.get(k)) for s, k in zip(signs, keys, strict=True)]
        for _, summary in done
    ]
    best = [done[i] for i in pareto_optimal(points)]
    goal = ", ".join(f"{d.removesuffix('e')}ing {k}" for d, k in zip(directions, keys, strict=True))
    if not best:
        return f"Pareto-optimal trials ({goal}): none, no finished job recorded all of {', '.join(keys)}"
    listed = "; ".join(
        f"job {job.name} ({', '.join(f'{k} {number(summary.get(k)):.4g}' for k in keys)})"
        for job, summary in best
    )
    return f"Pareto-optimal trials ({goal}): {listed}"


class SweepSummary(Callback):
    """Logs one line per job of the sweep folder (earlier commands' jobs too), each with its
    swept settings, when a multirun ends; exits non-zero if any job did not finish (a killed or
    failed job whose overrides a later job ran to the end does not count) or was refused.

    A sweep stopped by a signal (stylelab's sequential launcher) also lists the jobs that never
    started (not launched, or set up and stopped before their first step: summary status "not
    started") and exits 128 + the signal (130 for Ctrl-C).
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = collect_summaries(sweep_dir)
        jobs = SweepJobs(sweep_dir)
        again = redone(results)
        failed = [
            job
            for job, summary in results
            if status_of(summary) != Status.FINISHED and job not in again
        ]
        command_keys = sweep_keys(
            OmegaConf.select(config, "hydra.overrides.task", default=[]),
            OmegaConf.select(config, "hydra.sweeper.params", default=None),
        )
        settings = settings_of([job for job, _ in results], command_keys)
        never = jobs.never_started()
        set_up = sum(status_of(summary) == Status.NOT_STARTED for _, summary in results)
        succeeded = sum(status_of(summary) == Status.FINISHED for _, summary in results)
        stopped_by = jobs.data.get("stopped_by")
        if stopped_by:
            log.error(
                "multirun stopped by %s: %d of %d jobs finished, %d did not, %d never started (%s)",
                stopped_by,
                succeeded,
                len(results) + len(never),
                len(failed) - set_up,
                len(never) + set_up,
                sweep_dir,
            )
        else:
            log.info(
                "multirun finished: %d of %d jobs succeeded (%s)",
                succeeded,
                len(results),
                sweep_dir,
            )
        skipped = {str(job["job"]) for job in jobs.data.get("skipped", [])}
        for job, summary in results:
            level, line = job_line(job, summary, settings[job])
            if job in again:
                line += f" (done again in job {again[job]})"
            if job.name in skipped:
                line += " (skipped this time: already finished)"
            log.log(level, "%s", line)
        for entry in never:
            shown = Status.shown(Status.NOT_STARTED)
            log.error("  job %d: %s (%s)", entry["num"], shown, " ".join(entry["overrides"]))
        keys = return_keys(config.get("sweep_returns", "final/total"))
        if len(keys) > 1:
            log.info("%s", pareto_line(results, keys, directions(config)))
        for num in jobs.data.get("refused", []):
            log.error("  job %d: not run, its folder holds another run (see the log above)", num)
        exit_code = jobs.exit_code()
        if exit_code is not None:
            sys.exit(exit_code)
        if failed or jobs.data.get("refused"):
            sys.exit(1)  # the other jobs ran to the end; the sweep as a whole did not succeed
