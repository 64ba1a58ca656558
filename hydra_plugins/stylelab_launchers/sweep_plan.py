"""Numbering a launch's jobs in a sweep folder that may already hold jobs (a re-run, an extension).

A sweep folder is never rewritten: a job whose overrides match a finished job's exactly is
skipped ("already finished in job N"); one that matches an interrupted job (or a planned job
that never started) but for what a resume may change (`stylelab.resume.RESUMABLE`: more steps,
another device, other logging) continues it under its number; every other job gets a new number
after the existing ones. Failed and killed jobs keep their folders as they are; running the same
overrides again gives them a new job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from stylelab.outputs import RunFolder, was_interrupted
from stylelab.pareto import sweep_return
from stylelab.resume import resumable
from stylelab.run_folder import OVERRIDES_FILE, Status, read_overrides


class Earlier:
    """A job folder already in the sweep folder: its name, number (if a number), overrides."""

    def __init__(self, folder: Path, overrides: list[str]):
        self.folder, self.overrides = folder, overrides
        self.num = int(folder.name) if folder.name.isdigit() else None
        ended = earlier_run(folder)
        self.finished = ended == Status.FINISHED
        self.interrupted = was_interrupted(folder)
        self.not_started = ended == Status.NOT_STARTED  # set up, stopped before step 0


def earlier_run(folder: Path) -> str | None:
    """How the run in `folder` ended (`RunFolder.earlier_run`); None if none ran there."""
    return RunFolder(folder).earlier_run() if folder.is_dir() else None


def exact(overrides: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(overrides))


def loose(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides a resume may not change."""
    return tuple(sorted(o for o in overrides if not resumable(o.lstrip("+~").split("=")[0])))


def earlier_jobs(sweep_dir: Path) -> list[Earlier]:
    """The job folders in `sweep_dir` (those with `.hydra/overrides.yaml`)."""
    found = []
    for path in sorted(sweep_dir.glob(f"*/{OVERRIDES_FILE}")):
        folder = path.parent.parent
        overrides = read_overrides(folder)
        if overrides is not None:
            found.append(Earlier(folder, overrides))
    return found


def number_jobs(
    sweep_dir: Path,
    planned: list[dict[str, Any]],
    job_overrides: Sequence[Sequence[str]],
    first_num: int,
) -> list[tuple[int | Path, list[str]]]:
    """Each job of `job_overrides`, in order, as (its number, overrides) to run it, or (the
    folder of the finished job it repeats, overrides) to skip it. `planned`: the sweep's
    `jobs.json` entries (num, overrides, started)."""
    earlier = earlier_jobs(sweep_dir)
    taken = {e.num for e in earlier if e.num is not None} | {int(j["num"]) for j in planned}
    next_num = max(taken) + 1 if taken else first_num
    finished = {exact(e.overrides): e for e in earlier if e.finished}
    continued: dict[tuple[str, ...], int] = {}
    for job in planned:  # planned jobs that never started keep their numbers
        if not job["started"] and not (sweep_dir / str(job["num"])).exists():
            continued.setdefault(loose(job["overrides"]), int(job["num"]))
    for e in earlier:  # interrupted jobs continue in their folders; unstarted ones start there
        if (e.interrupted or e.not_started) and e.num is not None:
            continued[loose(e.overrides)] = e.num
    jobs: list[tuple[int | Path, list[str]]] = []
    for overrides in map(list, job_overrides):
        done = finished.pop(exact(overrides), None)
        num = None if done else continued.pop(loose(overrides), None)
        if done is None and num is None:
            num, next_num = next_num, next_num + 1
        jobs.append((done.folder if done else num, overrides))  # type: ignore[arg-type]
    return jobs


def skipped_result(
    folder: Path, overrides: list[str], task_name: str, returns: Any = "final/total"
) -> JobReturn:
    """A skipped job's result: what its finished twin in `folder` returned (`sweep_returns`; an
    unreadable summary returns inf for each objective, as a failed job does)."""
    value = sweep_return(RunFolder(folder).read_summary(), returns)
    return JobReturn(
        overrides=overrides,
        working_dir=str(folder),
        task_name=task_name,
        status=JobStatus.COMPLETED,
        _return_value=value,
    )
