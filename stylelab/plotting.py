"""Colours and line styles that follow a swept key: one colour per setting of one key, one line
style per setting of a second, so a plot of many runs reads at a glance (report and notebook)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stylelab.pareto import as_float

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType

    from stylelab.report import Job

LINE_STYLES: tuple[LineStyleType, ...] = (
    "-",
    "--",
    ":",
    "-.",
    (0, (5, 1, 1, 1, 1, 1)),
    (0, (1, 3)),
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def ordered_values(jobs: Sequence[Job], key: str | None) -> list[str | None]:
    """The values `key` takes across `jobs`: numerically sorted when all are numbers, else in
    order of appearance."""
    values: list[str | None] = (
        list(dict.fromkeys(job.value(key) for job in jobs)) if key else [None]
    )
    numbers = [as_float(value) for value in values]
    if all(number is not None for number in numbers):
        return [value for _, value in sorted(zip(numbers, values, strict=True))]
    return values


@dataclass
class KeyStyle:
    """The colour of each value of `color_by` and the line style and marker of each value of
    `style_by`; a numeric key gets a sequential colour map (without its palest end)."""

    jobs: Sequence[Job]
    color_by: str | None = None
    style_by: str | None = None
    colors: dict[str | None, Any] = field(init=False)
    styles: dict[str | None, int] = field(init=False)

    def __post_init__(self) -> None:
        from matplotlib import colormaps

        values = ordered_values(self.jobs, self.color_by)
        numeric = len(values) > 1 and all(as_float(v) is not None for v in values)
        if numeric or len(values) > 10:
            cmap = colormaps["viridis"]
            self.colors = {
                v: cmap(0.85 * i / max(len(values) - 1, 1)) for i, v in enumerate(values)
            }
        else:
            self.colors = {v: f"C{i}" for i, v in enumerate(values)}
        self.styles = {v: i for i, v in enumerate(ordered_values(self.jobs, self.style_by))}

    def color(self, job: Job) -> Any:
        return self.colors.get(job.value(self.color_by) if self.color_by else None, "gray")

    def linestyle(self, job: Job) -> Any:
        index = self.styles.get(job.value(self.style_by) if self.style_by else None, 0)
        return LINE_STYLES[index % len(LINE_STYLES)]

    def marker(self, job: Job) -> str:
        index = self.styles.get(job.value(self.style_by) if self.style_by else None, 0)
        return MARKERS[index % len(MARKERS)]

    def legend_handles(self, kind: str = "line") -> list[Any]:
        """One entry per colour value, then one per line style (or marker) value."""
        from matplotlib.lines import Line2D

        from stylelab.report import label

        handles = []
        if self.color_by:
            handles += [
                Line2D([], [], color=c, marker="o" if kind == "marker" else None, linestyle="-"
                       if kind == "line" else "", label=f"{self.color_by}={label(v)}")
                for v, c in self.colors.items()
            ]  # fmt: skip
        if self.style_by and len(self.styles) > 1:
            for value, index in self.styles.items():
                line = "" if kind == "marker" else LINE_STYLES[index % len(LINE_STYLES)]
                marker = MARKERS[index % len(MARKERS)] if kind == "marker" else None
                handles.append(
                    Line2D([], [], color="black", linestyle=line, marker=marker,
                           label=f"{self.style_by}={label(value)}")
                )  # fmt: skip
        return handles
