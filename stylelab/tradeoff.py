"""The trade-off plot: every run's `eval/content` (x) against its `eval/style` (y), coloured by
one swept key and labelled by another, with the Pareto-optimal runs (both minimised) marked:
one front per evaluation problem (the same content and style inputs at one evaluation size),
since the distances of different pairs are not on one scale.
The report and `notebooks/compare_runs.ipynb` draw it with `tradeoff_figure`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stylelab.pareto import TRADE_OFF, number, pareto_optimal
from stylelab.plotting import KeyStyle
from stylelab.run_folder import Status
from stylelab.seeds import mean_spread, seed_groups, seed_swept

if TYPE_CHECKING:
    from stylelab.report import Job


def tradeoff_point(job: Job) -> tuple[float, float]:
    return number(job.summary.get(TRADE_OFF[0])), number(job.summary.get(TRADE_OFF[1]))


def scored(jobs: Sequence[Job]) -> list[Job]:
    """The finished jobs with finite `eval/content` and `eval/style`."""
    return [
        job
        for job in jobs
        if job.status == Status.FINISHED and all(math.isfinite(v) for v in tradeoff_point(job))
    ]


# What puts two runs' eval/* on one scale: the same inputs, blend, masks and evaluation size.
PROBLEM_KEYS = (
    "pair.content", "pair.style", "pair.style_blend", "pair.style_masks",
    "pair.style_source_masks", "image_size",
)  # fmt: skip


def problem_of(job: Job) -> tuple[str | None, ...]:
    """The evaluation problem a run was measured on: runs of different problems do not compete."""
    return tuple(job.value(key) for key in PROBLEM_KEYS)


def pareto_jobs(jobs: Sequence[Job]) -> list[Job]:
    """The Pareto-optimal runs (no run of the same inputs and evaluation size is closer to both
    content and style), each problem's front by content."""
    problems: dict[tuple[str | None, ...], list[Job]] = {}
    for job in scored(jobs):
        problems.setdefault(problem_of(job), []).append(job)
    best = []
    for found in problems.values():
        front = [found[i] for i in pareto_optimal([tradeoff_point(job) for job in found])]
        best += sorted(front, key=tradeoff_point)
    return best


def missing_reason(jobs: Sequence[Job]) -> str | None:
    """Why there is no trade-off plot, or None when there is one."""
    if scored(jobs):
        return None
    errors = sorted(
        {str(job.summary["eval/error"]) for job in jobs if job.summary.get("eval/error")}
    )
    if errors:
        return f"No trade-off plot: the evaluation failed ({'; '.join(errors)})."
    return (
        f"No trade-off plot: no finished run recorded {TRADE_OFF[0]} and {TRADE_OFF[1]} "
        "(runs from before the evaluation protocol, or none finished)."
    )


def tradeoff_figure(
    jobs: Sequence[Job],
    color_by: str | None = None,
    label_by: str | None = None,
    swept: Sequence[str] = (),
) -> Any:
    """A matplotlib Figure (Agg, no pyplot) of the trade-off, or None when no run was evaluated.
    With `seed` among the `swept` keys each setting also shows its mean and standard deviation
    over seeds."""
    from matplotlib.figure import Figure

    from stylelab.report import label

    found = scored(jobs)
    if not found:
        return None
    style = KeyStyle(found, color_by)
    figure = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = figure.subplots()
    by_seed = seed_swept(found, swept)
    for job in found:
        x, y = tradeoff_point(job)
        ax.scatter(x, y, color=style.color(job), s=36, alpha=0.5 if by_seed else 0.9, zorder=2)
        if label_by and not by_seed:
            ax.annotate(label(job.value(label_by)), (x, y), textcoords="offset points",
                        xytext=(5, 4), fontsize="small")  # fmt: skip
    if by_seed:
        for group in seed_groups(found, swept).values():
            xs, ys = zip(*(tradeoff_point(job) for job in group), strict=True)
            (mx, sx), (my, sy) = mean_spread(xs), mean_spread(ys)
            mean = (mx, my)
            ax.errorbar(mx, my, xerr=sx, yerr=sy, color=style.color(group[0]),
                        marker="D", markersize=7, capsize=3, zorder=3)  # fmt: skip
            if label_by:
                ax.annotate(label(group[0].value(label_by)), mean, textcoords="offset points",
                            xytext=(6, 5), fontsize="small")  # fmt: skip
    best = pareto_jobs(found)
    fronts: dict[tuple[str | None, ...], list[tuple[float, float]]] = {}
    for job in best:  # one front per problem (content/style inputs, evaluation size)
        fronts.setdefault(problem_of(job), []).append(tradeoff_point(job))
    for n, front in enumerate(fronts.values()):
        ax.plot(*zip(*front, strict=True), color="black", linewidth=1, drawstyle="steps-post",
                zorder=1, label="Pareto front" + (" (one per pair)" if len(fronts) > 1 else "")
                if n == 0 else None)  # fmt: skip
    points = [tradeoff_point(job) for job in best]
    xs, ys = zip(*points, strict=True)
    ax.scatter(xs, ys, facecolors="none", edgecolors="black", s=120,
               linewidths=1.5, zorder=4, label=f"Pareto-optimal ({len(best)})")  # fmt: skip
    if all(v > 0 for job in found for v in tradeoff_point(job)):
        ax.set(xscale="log", yscale="log")
    ax.set(
        xlabel=f"{TRADE_OFF[0]} (distance to the content, lower is closer)",
        ylabel=f"{TRADE_OFF[1]} (distance to the style, lower is closer)",
        title="Trade-off: content against style" + (" (mean ± sd over seeds)" if by_seed else ""),
    )
    ax.grid(True, which="major", alpha=0.3)
    handles = style.legend_handles(kind="marker") + ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize="small", loc="best")
    return figure
