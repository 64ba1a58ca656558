"""Hydra callbacks: a run's folder is checked before Hydra writes to it; a multirun's summary."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from stylelab.errors import StyleLabError
from stylelab.outputs import NOT_STARTED, SUMMARY_FILE, write_json

log = logging.getLogger("stylelab")
JOBS_FILE = "jobs.json"  # a sweep's job list, written by stylelab's sequential launcher
# A job folder without summary.json: the run never got to write one (killed outright).
KILLED = {
    "status": "killed",
    "error": "no summary.json, the job ended without writing one (SIGKILL, out of memory, "
    "node failure or a time limit without requeue); see its run.log",
}
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

    def plan(self, jobs: list[tuple[int, list[str]]]) -> None:
        """A launch of `jobs` begins (a sweeper may launch several; a re-run of a stopped sweep
        in its folder replaces the earlier entries of the same jobs)."""
        nums = {num for num, _ in jobs}
        kept = [job for job in self.data["jobs"] if job["num"] not in nums]
        self.data["jobs"] = kept + [
            {"num": num, "overrides": o, "started": False} for num, o in jobs
        ]
        self.data["stopped_by"] = None
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
    """(job folder, summary) for every job folder under a multirun folder, in job order."""
    jobs = (
        [path for path in sweep_dir.iterdir() if (path / ".hydra").is_dir()]
        if sweep_dir.is_dir()
        else []
    )
    jobs.sort(
        key=lambda path: (
            not path.name.isdigit(),
            int(path.name) if path.name.isdigit() else 0,
            path.name,
        )
    )
    results = []
    for job in jobs:
        path = job / SUMMARY_FILE
        try:
            summary = json.loads(path.read_text()) if path.exists() else dict(KILLED)
        except json.JSONDecodeError:
            summary = {"status": "unreadable summary"}
        results.append((job, summary))
    return results


def job_line(job: Path, summary: dict[str, Any]) -> tuple[int, str]:
    """(log level, line) for one job of the summary."""
    status, error = summary.get("status"), summary.get("error", "see its run.log")
    total = summary.get("final/total")
    if status == "finished" and isinstance(total, float):
        return logging.INFO, f"  job {job.name}: finished, final total {total:.4g}"
    if status == "interrupted" and summary.get("checkpoint", True):
        resume = f"continue with: python -m stylelab.run resume={job}"
        return logging.ERROR, f"  job {job.name}: interrupted ({error}); {resume}"
    if status == "interrupted":
        return logging.ERROR, f"  job {job.name}: interrupted at once, no checkpoint ({error})"
    if status == NOT_STARTED:
        return logging.ERROR, f"  job {job.name}: never started ({error})"
    return logging.ERROR, f"  job {job.name}: {status}: {error}"


class SweepSummary(Callback):
    """Logs one line per job when a multirun ends; exits non-zero if any job did not finish.

    A sweep stopped by a signal (stylelab's sequential launcher) also lists the jobs that never
    started (not launched, or set up and stopped before their first step: summary status "not
    started") and exits 128 + the signal (130 for Ctrl-C).
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = collect_summaries(sweep_dir)
        jobs = SweepJobs(sweep_dir)
        failed = [job for job, summary in results if summary.get("status") != "finished"]
        never = jobs.never_started()
        set_up = sum(summary.get("status") == NOT_STARTED for _, summary in results)
        succeeded = len(results) - len(failed)
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
        for job, summary in results:
            log.log(*job_line(job, summary))
        for job in never:
            log.error("  job %d: never started (%s)", job["num"], " ".join(job["overrides"]))
        exit_code = jobs.exit_code()
        if exit_code is not None:
            sys.exit(exit_code)
        if failed:
            sys.exit(1)  # the other jobs ran to the end; the sweep as a whole did not succeed
