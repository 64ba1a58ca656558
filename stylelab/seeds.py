"""Runs that differ only in `seed`: grouped per setting, with the mean and spread of each metric."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

from stylelab.pareto import as_float
from stylelab.run_folder import Status

if TYPE_CHECKING:
    from stylelab.report import Job


def seed_swept(jobs: Sequence[Job], keys: Sequence[str]) -> bool:
    """`seed` is among the swept `keys` and takes more than one value."""
    return "seed" in keys and len({job.value("seed") for job in jobs}) > 1


def seed_groups(jobs: Sequence[Job], keys: Sequence[str]) -> dict[tuple, list[Job]]:
    """Jobs grouped by their values of `keys` other than `seed` (one group per setting)."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.value(k) for k in keys if k != "seed"), []).append(job)
    return groups


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_rows(
    jobs: Sequence[Job], keys: Sequence[str], metrics: Sequence[str]
) -> list[tuple[tuple, int, list[str]]]:
    """(setting, finished runs, "mean ± sd" of each metric) per setting, over its finished runs."""
    rows = []
    for setting, group in seed_groups(jobs, keys).items():
        done = [job for job in group if job.status == Status.FINISHED]
        cells = []
        for metric in metrics:
            values = [v for job in done if (v := as_float(job.summary.get(metric))) is not None]
            cells.append("{:.4g} ± {:.2g}".format(*mean_spread(values)) if values else "")
        rows.append((setting, len(done), cells))
    return rows
