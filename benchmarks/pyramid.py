"""Time to quality: coarse-to-fine (pyramid) against single-size L-BFGS, built as a run builds them.

    python benchmarks/pyramid.py [--device cuda|cpu] [--size 512] [--steps 300] [--out r.json]

The single-size run takes `--steps` L-BFGS evaluations at `--size`; its final total is the
target. The pyramid (sizes from `--min-size` by sqrt 2, `--coarse-steps` per coarse stage) then
runs its final stage until it reaches that total or has spent as many evaluations there. Reported:
the wall time each needs to reach the target (the pyramid's includes its coarse stages) and the
best total each reaches in equal time. Totals compare at the final size only. Prints JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from benchmarks.engine import print_result  # noqa: E402
from stylelab.config import Config  # noqa: E402
from stylelab.engine.loop import Observer, Row, Synthesis  # noqa: E402
from stylelab.engine.schedule import pyramid_sizes  # noqa: E402
from stylelab.factory import build_synthesis  # noqa: E402


class Timeline(Observer):
    """(seconds since start, step, stage, total) of every row, stamped when it is read back."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.points: list[tuple[float, int, int, float]] = []

    def on_losses(self, rows: list[Row]) -> None:
        now = time.perf_counter() - self.started
        self.points += [(now, int(r["step"]), int(r["stage"]), float(r["total"])) for r in rows]


class StopAt(Observer):
    """Asks the loop to stop once the last stage's total is at or below `target`."""

    def __init__(self, stages: int, target: float) -> None:
        self.last_stage, self.target, self.reached = stages - 1, target, False

    def on_losses(self, rows: list[Row]) -> None:
        self.reached |= any(
            r["stage"] == self.last_stage and r["total"] <= self.target for r in rows
        )


def config(args: argparse.Namespace, pyramid: bool) -> Config:
    overrides = [
        "pair.name=astronaut_hubble", "pair.content=skimage:astronaut",
        "pair.style=skimage:hubble_deep_field", "layers.name=approach2",
        "layers.style=[2,7,12,21,30]", "layers.content=[22,25]", f"model.weights={args.weights}",
        f"image_size={args.size}", f"steps={args.steps}", f"device={args.device}",
        f"log.flush_every={args.flush_every}", "log.image_every=1000000",
    ]  # fmt: skip
    if pyramid:
        overrides += [
            "schedule.name=pyramid",
            f"schedule.min_size={args.min_size}",
        ]
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist(overrides))
    config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    if pyramid:  # coarse stages get --coarse-steps, the final stage up to --steps
        stages = len(pyramid_sizes(args.size, args.min_size))
        config.schedule.steps = [args.coarse_steps] * (stages - 1) + [args.steps]
    return config


def run(synthesis: Synthesis, stop: StopAt | None = None) -> Timeline:
    timeline = Timeline()
    observers: list[Observer] = [timeline] + ([stop] if stop else [])
    synthesis.run(observers, should_stop=lambda: bool(stop and stop.reached))
    if synthesis.synth is not None and synthesis.synth.image.device.type == "cuda":
        torch.cuda.synchronize()
    return timeline


def first_time_at(timeline: Timeline, stage: int, target: float) -> float | None:
    return next((t for t, _, s, total in timeline.points if s == stage and total <= target), None)


def best_by(timeline: Timeline, stage: int, seconds: float) -> float | None:
    totals = [total for t, _, s, total in timeline.points if s == stage and t <= seconds]
    return min(totals) if totals else None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    single = run(build_synthesis(config(args, pyramid=False)).synthesis)
    single_seconds, target = single.points[-1][0], single.points[-1][3]
    built = build_synthesis(config(args, pyramid=True)).synthesis
    last = len(built.stages) - 1
    pyramid = run(built, StopAt(len(built.stages), target))
    reached = first_time_at(pyramid, last, target)
    return {
        "device": args.device, "size": args.size, "steps": args.steps, "weights": args.weights,
        "pyramid_sizes": [s.size for s in built.stages], "coarse_steps": args.coarse_steps,
        "single_seconds": round(single_seconds, 3), "target_total": target,
        "pyramid_seconds_to_target": None if reached is None else round(reached, 3),
        "time_ratio": None if reached is None else round(reached / single_seconds, 3),
        "pyramid_best_in_single_time": best_by(pyramid, last, single_seconds),
        "single_best_in_equal_time": min(p[3] for p in single.points),
        "pyramid_final_stage_evals": sum(1 for p in pyramid.points if p[2] == last),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--min-size", type=int, default=128)
    parser.add_argument("--coarse-steps", type=int, default=100)
    parser.add_argument("--flush-every", type=int, default=5)
    parser.add_argument("--weights", default="random")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = measure(args)
    print_result(result, args.out, indent=1)
    return result


if __name__ == "__main__":
    main()
