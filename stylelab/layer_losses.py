"""Per-layer final losses, weighted (as logged) and unweighted (divided by the term's weight).

`losses.jsonl` and `summary.json` record each layer's term times its weight: the global
`style_weight`/`content_weight` times the layer's own weight (`layers.style_weights`, default 1).
Divided by both, runs of different weights compare by how far the image is from the style and
the content: in the style-weight study the 1e6 run has the highest weighted style loss, yet the
lowest unweighted one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stylelab.pareto import as_float
from stylelab.plotting import KeyStyle

if TYPE_CHECKING:
    from stylelab.report import Job

KINDS = ("style", "content")


def layer_losses(job: Job, kind: str, unweighted: bool = False) -> dict[str, float]:
    """{layer: final loss} of one kind (`style`/`content`), in layer order; unweighted divides
    by the global weight times the layer's weight (a layer weighted 0 is left out)."""
    prefix = f"final/{kind}/"
    found = {
        k.removeprefix(prefix): as_float(v) for k, v in job.summary.items() if k.startswith(prefix)
    }
    values = {layer: v for layer, v in found.items() if v is not None}
    if not unweighted:
        return values
    weights = term_weights(job, kind, len(found))
    return {
        layer: value / weight
        for (layer, value), weight in zip(values.items(), weights, strict=False)
        if weight > 0
    }


def term_weights(job: Job, kind: str, count: int) -> list[float]:
    """The weight of each of `count` layer terms: global weight x the layer's own (default 1)."""
    config: dict[str, Any] = job.config or {}
    overall = as_float(job.value(f"{kind}_weight"))
    layers = config.get("layers") or {}
    own = layers.get(f"{kind}_weights") if isinstance(layers, dict) else None
    own = own if isinstance(own, list) and len(own) == count else [1.0] * count
    return [(overall if overall is not None else math.nan) * float(w) for w in own]


def unweighted_total(job: Job, kind: str) -> float | None:
    """The sum of one kind's unweighted per-layer final losses (None when none were recorded)."""
    values = layer_losses(job, kind, unweighted=True)
    return sum(values.values()) if values else None


def layer_figure(
    jobs: Sequence[Job], color_by: str | None = None, style_by: str | None = None
) -> Any:
    """A Figure: each kind's final per-layer losses, weighted beside unweighted, one line per run
    (colour by `color_by`, line style by `style_by`); None when no run recorded per-layer losses."""
    from matplotlib.figure import Figure

    kinds = [kind for kind in KINDS if any(layer_losses(job, kind) for job in jobs)]
    if not kinds:
        return None
    style = KeyStyle(jobs, color_by, style_by)
    figure = Figure(figsize=(4.6 * 2 * len(kinds), 4.2), layout="constrained")
    axes = figure.subplots(1, 2 * len(kinds), squeeze=False)[0]
    for index, (kind, unweighted) in enumerate((k, u) for k in kinds for u in (False, True)):
        ax = axes[index]
        for job in jobs:
            values = layer_losses(job, kind, unweighted)
            if values:
                ax.plot(list(values), list(values.values()), color=style.color(job),
                        linestyle=style.linestyle(job), marker=".")  # fmt: skip
        if any(v > 0 for line in ax.lines for v in line.get_ydata()):
            ax.set_yscale("log", nonpositive="mask")
        how = "unweighted" if unweighted else "weighted"
        ax.set(title=f"final {kind} loss per layer, {how}", xlabel="layer")
        ax.tick_params(axis="x", labelrotation=45)
        ax.grid(True, alpha=0.3)
    handles = style.legend_handles()
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
                      fontsize="small")  # fmt: skip
    return figure
