"""Print a short table from a bench.py JSON file: `python benchmarks/summary.py result.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def rows(result: dict[str, Any]) -> list[tuple[str, Any, Any, Any, Any]]:
    """(name, ms per evaluation, seconds, peak MiB, final loss) for every timed run."""
    runs = {k: result.get(k) for k in ("baseline", "baseline_frozen", "stylelab")}
    runs.update({f"variant {k}": v for k, v in result.get("variants", {}).items()})
    runs["adam"] = result.get("adam")
    keys = ("ms_per_eval", "seconds", "peak_memory_mib", "final_loss")
    return [
        (name, *(run.get(key) for key in keys))
        for name, run in runs.items()
        if isinstance(run, dict) and "ms_per_eval" in run
    ]


def main(path: str) -> None:
    result = json.loads(Path(path).read_text())
    print(f"{'run':28} {'ms/eval':>9} {'seconds':>8} {'peak MiB':>9} {'final loss':>11}")
    for name, ms, seconds, peak, loss in rows(result):
        print(f"{name:28} {ms:9.2f} {seconds:8.2f} {peak:9.0f} {loss:11.4g}")
    print("speedup", result.get("speedup"), "| vs frozen", result.get("speedup_vs_frozen"))
    print("targets", json.dumps(result.get("targets")))
    wandb = result.get("wandb", {})
    for name in ("wandb", "wandb_background"):
        if name in wandb:
            print(name, json.dumps(wandb[name]), "| none:", json.dumps(wandb["none"]))
    for row in result.get("memory", {}).get("attempts", []):
        print("memory", json.dumps(row))


if __name__ == "__main__":
    main(sys.argv[1])
