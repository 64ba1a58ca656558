"""Stand-in `eval/*` keys for tests of the views: written into a finished run's summary.json as
the evaluation protocol records them, so the report, notebook and Pareto sweeps can be tested
without it. The values are the run's own unweighted final losses (a deterministic function of
its output), not the protocol's metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

PROTOCOL = "stub-1"
# eval/content, eval/style per job of the tiny sweep (tests/sweep_fixture.py): jobs 0, 1 and 3
# are Pareto-optimal
POINTS = {"0": (1.0, 5.0), "1": (2.0, 2.0), "2": (3.0, 3.0), "3": (5.0, 1.0)}


def stub_metrics(summary: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """eval/* for one finished run from its summary and resolved config."""
    content = summary["final/content"] / max(float(config["content_weight"]), 1e-12)
    style = summary["final/style"] / max(float(config["style_weight"]), 1e-12)
    return {
        "eval/content": content,
        "eval/style": style,
        "eval/ssim": 1.0 / (1.0 + content),
        "eval/color": style**0.5,
        "eval/protocol": PROTOCOL,
    }


def add_eval(job: Path, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write eval/* (the given values, else `stub_metrics`) into `job`/summary.json."""
    import yaml

    summary = json.loads((job / "summary.json").read_text())
    config = yaml.safe_load((job / "config.yaml").read_text())
    summary.update(values if values is not None else stub_metrics(summary, config))
    (job / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def copy_sweep(sweep: Path, to: Path, points: dict | None = POINTS) -> Path:
    """A copy of `sweep` (without checkpoints and frames) whose jobs record `points` as their
    eval/content and eval/style; `points=None` leaves the summaries as they are."""
    shutil.copytree(sweep, to, ignore=shutil.ignore_patterns("checkpoint.pt", "frames", "*.gif"))
    for name, (content, style) in (points or {}).items():
        add_eval(to / name, {"eval/content": content, "eval/style": style, "eval/ssim": 0.5,
                             "eval/color": 0.1, "eval/protocol": PROTOCOL})  # fmt: skip
    return to
