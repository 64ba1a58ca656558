"""Sweep throughput: the same N-job sweep through Hydra's basic launcher and the batching one.

1. Whole sweep: `python -m stylelab.run -m` with N style weights, once with
   `hydra/launcher=basic` (one job after another, as Hydra ships it) and once with
   `hydra/launcher=batched`; wall time of each command, start-up included.
2. The engine alone: milliseconds per evaluation per image for one image (`Synthesizer.step`)
   and for a batch of K (`BatchedStep`), after warm-up.

    python -m benchmarks.sweep                                   # CPU: 16 jobs x 20 steps, 32 px
    python -m benchmarks.sweep --device cuda --size 256 --steps 300 --weights imagenet

Writes benchmarks/results/<device>-sweep-<size>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def sweep_command(args: argparse.Namespace, launcher: str, sweep_dir: Path) -> list[str]:
    weights = ",".join(f"{w:.4g}" for w in np.logspace(3, 6, args.jobs))
    command = [
        sys.executable, "-m", "stylelab.run", "-m", f"hydra/launcher={launcher}",
        f"model.weights={args.weights}", f"image_size={args.size}", f"steps={args.steps}",
        f"device={args.device}", f"logger={args.logger}", f"style_weight={weights}",
        f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    if launcher == "batched":
        command.append(f"hydra.launcher.batch_size={args.batch_size}")
    return command


def whole_sweep(args: argparse.Namespace, launcher: str, root: Path) -> dict[str, Any]:
    sweep_dir = root / launcher
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    started = time.perf_counter()
    result = subprocess.run(
        sweep_command(args, launcher, sweep_dir), cwd=root, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{launcher} sweep failed:\n{result.stderr[-3000:]}")
    totals = [
        json.loads((job / "summary.json").read_text())["final/total"]
        for job in sorted(
            sweep_dir.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1
        )
        if (job / "summary.json").is_file()
    ]
    return {"seconds": seconds, "jobs": len(totals), "final_totals": totals}


def engine_ms(args: argparse.Namespace, batch: int, repeats: int = 5) -> float:
    """Milliseconds per evaluation per image, one image or a batch of `batch` (same job)."""
    from stylelab.config import Config, LayersConfig, LoggerConfig, ModelConfig, PairConfig
    from stylelab.engine.batch import BatchedStep, shared_encoder
    from stylelab.factory import build_synthesis, sharing_vgg

    cfg = Config(
        pair=PairConfig(name="bench", content="skimage:astronaut", style="skimage:hubble_deep_field"),
        layers=LayersConfig(name="approach2", style=[2, 7, 12, 21, 30], content=[22, 25]),
        model=ModelConfig(weights=args.weights), logger=LoggerConfig(name="none"),
        image_size=args.size, device=args.device,
    )  # fmt: skip
    with sharing_vgg():
        synths = [build_synthesis(cfg).synthesis.enter_stage(0) for _ in range(batch)]
    if batch == 1:
        step = synths[0].step
    else:
        step = BatchedStep(synths, shared_encoder([s.loss.encoder for s in synths]))
    for _ in range(3):
        step()
    synchronize(args.device)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(args.device)
    return (time.perf_counter() - started) / repeats / batch * 1000


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--logger", default="wandb", help="wandb (offline) or none")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        basic = whole_sweep(args, "basic", Path(tmp))
        batched = whole_sweep(args, "batched", Path(tmp))
    single = engine_ms(args, 1)
    together = engine_ms(args, min(args.batch_size, args.jobs))
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "args": vars(args),
        "basic": basic,
        "batched": batched,
        "sweep_speedup": basic["seconds"] / batched["seconds"],
        "engine_ms_per_image": {"single": single, "batched": together},
        "engine_speedup": single / together,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.device.split(':')[0]}-sweep-{args.size}-{args.logger}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"| {args.jobs} jobs x {args.steps} steps, {args.size} px, {args.device}, "
          f"logger={args.logger} | basic | batched | speedup |")  # fmt: skip
    print("|---|---|---|---|")
    print(f"| whole sweep, s | {basic['seconds']:.1f} | {batched['seconds']:.1f} | "
          f"{report['sweep_speedup']:.2f}x |")  # fmt: skip
    print(f"| engine, ms per evaluation per image | {single:.1f} (one image) | "
          f"{together:.1f} (batch of {min(args.batch_size, args.jobs)}) | "
          f"{report['engine_speedup']:.2f}x |")  # fmt: skip
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
