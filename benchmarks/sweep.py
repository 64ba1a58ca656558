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


def engine_synths(args: argparse.Namespace, batch: int) -> list[Any]:
    """`batch` synthesizers of the benchmark's job (approach2) over one VGG, first stage."""
    from stylelab.config import Config, LayersConfig, LoggerConfig, ModelConfig, PairConfig
    from stylelab.factory import build_synthesis, sharing_vgg

    cfg = Config(
        pair=PairConfig(name="bench", content="skimage:astronaut", style="skimage:hubble_deep_field"),
        layers=LayersConfig(name="approach2", style=[2, 7, 12, 21, 30], content=[22, 25]),
        model=ModelConfig(weights=args.weights), logger=LoggerConfig(name="none"),
        image_size=args.size, device=args.device,
    )  # fmt: skip
    with sharing_vgg():
        return [build_synthesis(cfg).synthesis.enter_stage(0) for _ in range(batch)]


def batched_step(synths: list[Any], vectorised: bool | None = None) -> Any:
    from stylelab.engine.batch import BatchedStep, shared_encoder

    encoder = shared_encoder([s.loss.encoder for s in synths])
    return BatchedStep(synths, encoder, vectorised=vectorised)


def engine_ms(args: argparse.Namespace, batch: int, repeats: int = 5) -> float:
    """Milliseconds per evaluation per image, one image or a batch of `batch` (same job)."""
    synths = engine_synths(args, batch)
    step = synths[0].step if batch == 1 else batched_step(synths)
    for _ in range(3):
        step()
    synchronize(args.device)
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize(args.device)
    return (time.perf_counter() - started) / repeats / batch * 1000


def step_shares(args: argparse.Namespace, vectorised: bool, repeats: int = 5) -> dict[str, float]:
    """Where a batched step of `--batch-size` jobs goes, ms (fastest of `repeats` each): the whole
    step; the objectives (terms and their backward to the features, given the features); the
    optimiser updates (given the terms and gradient). `vectorised`: the stacked objective and
    batched optimiser, else each job's own (the path before issue 27, and batch_invariant's)."""
    synths = engine_synths(args, min(args.batch_size, args.jobs))
    step = batched_step(synths, vectorised)
    for _ in range(3):
        step()
    first, image = synths[0], step._batch()
    with first.autocast():
        features = {k: v.detach() for k, v in step.encoder(image.detach()).items()}

    def objectives() -> Any:
        inputs = {k: v.clone().requires_grad_(True) for k, v in features.items()}
        with first.autocast():
            if step.objective is not None:
                matrix = step.objective(inputs, image)
                total = step.objective.totals(matrix).sum()
                rows = step.objective.rows(matrix.detach())
            else:
                results, total = step.evaluate_each(inputs, image)
                rows = [{key: value.detach() for key, value in r.items()} for r in results]
        torch.autograd.grad(total, list(inputs.values()))
        return rows

    grad = torch.zeros_like(image)
    rows = objectives()

    def updates() -> None:
        if step.objective is not None:
            step._update(rows, grad)
        else:
            for k, (s, terms) in enumerate(zip(synths, rows, strict=True)):
                s.update(terms, grad[k : k + 1])

    timings = {"step": float("inf"), "objectives": float("inf"), "updates": float("inf")}
    for _ in range(repeats):  # interleaved: the machine's load drifts
        for name, run in (("step", step), ("objectives", objectives), ("updates", updates)):
            synchronize(args.device)
            started = time.perf_counter()
            run()
            synchronize(args.device)
            timings[name] = min(timings[name], (time.perf_counter() - started) * 1000)
    timings["share"] = (timings["objectives"] + timings["updates"]) / timings["step"]
    return timings


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
    shares = {"vectorised": step_shares(args, True), "per_job": step_shares(args, False)}
    report = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "args": vars(args),
        "basic": basic,
        "batched": batched,
        "sweep_speedup": basic["seconds"] / batched["seconds"],
        "engine_ms_per_image": {"single": single, "batched": together},
        "engine_speedup": single / together,
        "batched_step_ms": shares,
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
    for name, t in shares.items():
        print(f"| batched step, {name}: ms (objectives + updates) | {t['step']:.1f} | "
              f"{t['objectives']:.1f} + {t['updates']:.1f} | {t['share']:.0%} |")  # fmt: skip
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
