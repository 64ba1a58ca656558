"""What W&B logging adds to a run: `run_synthesis` with no tracker vs an offline WandbTracker.

Default log settings (losses read back and logged every step in batches of 10, a frame every
25 steps). `seconds` is the runner's own synthesis-loop time (summary["seconds"]); `wall`
adds the tracker's start and finish (wandb.init, the final images, GIF and table).
Also measured: the same tracker behind `BackgroundTracker`, which moves the per-step tracker
calls to a worker thread (what `make_tracker("wandb")` now returns).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stylelab.config import Config, LayersConfig, LoggerConfig, ModelConfig, PairConfig
from stylelab.runner import run_synthesis
from stylelab.tracking import BackgroundTracker, NullTracker, RunInfo, Tracker

log = logging.getLogger(__name__)


def make(name: str) -> Tracker:
    if name == "none":
        return NullTracker()
    from stylelab.tracking.wandb_tracker import WandbTracker

    tracker = WandbTracker(mode="offline")
    return BackgroundTracker(tracker) if name == "wandb_background" else tracker


def one_run(cfg: Config, name: str, root: Path) -> dict[str, float]:
    run_dir = root / f"{name}-{time.monotonic_ns()}"
    run_dir.mkdir(parents=True)
    info = RunInfo(config=asdict(cfg), run_dir=run_dir, name=f"bench-{name}")
    started = time.perf_counter()
    summary = run_synthesis(cfg, run_dir, make(name), info)
    return {"seconds": summary["seconds"], "wall": time.perf_counter() - started}


def measure(
    device: str, size: int, steps: int, images: tuple[np.ndarray, np.ndarray], repeats: int = 1
) -> dict[str, Any]:
    """Alternating runs (after one untimed warm-up run); mean seconds and % over `none`."""
    os.environ.setdefault("WANDB_SILENT", "true")
    names = ("none", "wandb", "wandb_background")
    with tempfile.TemporaryDirectory(prefix="stylelab-bench-") as tmp:
        root = Path(tmp)
        for key, array in zip(("content", "style"), images, strict=True):
            Image.fromarray(array).save(root / f"{key}.png")
        cfg = Config(
            pair=PairConfig(name="bench", content=str(root / "content.png"), style=str(root / "style.png")),
            layers=LayersConfig(name="approach1", style=[0, 5, 10, 19, 28], content=[25]),
            model=ModelConfig(weights="random"),
            logger=LoggerConfig(name="none"),
            steps=steps, image_size=size, device=device,
        )  # fmt: skip
        one_run(cfg, "none", root)  # warm-up: CUDA context, cuDNN autotuning
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for _ in range(repeats):
            for name in names:
                runs[name].append(one_run(cfg, name, root))
    result: dict[str, Any] = {"steps": steps, "size": size, "repeats": repeats}
    for name in names:
        result[name] = {
            key: round(float(np.mean([r[key] for r in runs[name]])), 4)
            for key in ("seconds", "wall")
        }
    for name in names[1:]:
        for key in ("seconds", "wall"):
            base = result["none"][key]
            result[name][f"overhead_pct_{key}"] = round(100 * (result[name][key] - base) / base, 2)
    return result
