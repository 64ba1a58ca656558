"""What a run returns to a sweeper (`sweep_returns`), and the Pareto-optimal runs of a sweep.

The evaluation's keys (`eval/*` in each run's summary.json) put runs of different objectives on
one scale; the trade-off between content and style is read from the pair `TRADE_OFF`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

EVAL_KEYS = ("eval/content", "eval/style", "eval/ssim", "eval/color")
TRADE_OFF = ("eval/content", "eval/style")  # x, y of the trade-off plot; both minimised


def return_keys(setting: Any) -> list[str]:
    """`sweep_returns` as a list of summary keys (`final/total` or `[eval/content, eval/style]`)."""
    if isinstance(setting, str):
        return [setting]
    return [str(key) for key in setting]


def as_float(value: Any) -> float | None:
    """A number from a JSON value (`"nan"`/`"inf"` included), else None."""
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def number(value: Any) -> float:
    """A summary value as a float; NaN when missing or not a number."""
    found = as_float(value)
    return math.nan if found is None else found


def sweep_return(summary: Mapping[str, Any], setting: Any) -> float | list[float]:
    """What `stylelab.run` returns to a sweeper: one float for one key, a list for several.
    A key the summary lacks (`eval/*` when the evaluation failed) or a NaN gives inf: Optuna
    fails the whole sweep on a NaN, and ranks inf last."""
    values = [number(summary.get(key)) for key in return_keys(setting)]
    values = [math.inf if math.isnan(value) else value for value in values]
    return values[0] if isinstance(setting, str) else values


def failed_return(setting: Any) -> float | list[float]:
    """A failed run's return: inf for each objective, so a sweeper ranks it last."""
    keys = return_keys(setting)
    return math.inf if isinstance(setting, str) else [math.inf] * len(keys)


def pareto_optimal(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (all coordinates minimised); points with a
    non-finite coordinate are never optimal. Equal points are all kept."""
    finite = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]

    def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(
            x < y for x, y in zip(a, b, strict=True)
        )

    return [i for i in finite if not any(dominates(points[j], points[i]) for j in finite)]
