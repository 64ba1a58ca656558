"""What the evaluation protocol (stylelab-eval-1) adds to a run, at the default `eval.every`
(at the end only) and at `eval.every=10`.

    python benchmarks/evaluation.py [--device cpu|cuda] [--size 512] [--steps 3] [--run-steps 300]

Times `--steps` steps of a default run (approach2 layers, L-BFGS, precision auto, random
weights: the arithmetic of ImageNet's) through `run_synthesis`, after a one-step warm-up
run, and extrapolates to
`--run-steps`; times building the evaluator (its VGG copy and the inputs' targets) and one
evaluation of the saved final.png (`--repeats` times, the mean). At the end only the run pays
one build and one evaluation; with `eval.every=N`, one build and run_steps/N evaluations.
Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.engine import environment, print_result, square_images  # noqa: E402
from stylelab import runner  # noqa: E402
from stylelab.config import Config, LayersConfig, LoggerConfig, ModelConfig, PairConfig  # noqa: E402
from stylelab.evaluating import build_evaluator, evaluate_file  # noqa: E402
from stylelab.factory import SourceImages, load_vgg  # noqa: E402
from stylelab.tracking import NullTracker, RunInfo  # noqa: E402

log = logging.getLogger("benchmarks.evaluation")


def measure(device: str, size: int, steps: int, run_steps: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="stylelab-eval-bench-") as tmp:
        root = Path(tmp)
        for key, array in zip(("content", "style"), square_images(size), strict=True):
            Image.fromarray(array).save(root / f"{key}.png")
        pair = PairConfig(
            name="bench", content=str(root / "content.png"), style=str(root / "style.png")
        )
        cfg = Config(
            pair=pair, layers=LayersConfig(name="approach2", style=[2, 7, 12, 21, 30], content=[22]),
            model=ModelConfig(weights="random"), logger=LoggerConfig(name="none"),
            steps=steps, image_size=size, device=device,
        )  # fmt: skip
        log.info("warm-up: 1 step, then %d steps at %d px on %s", steps, size, device)
        for name, count in (("warm-up", 1), ("run", steps)):
            run_dir, cfg.steps = root / name, count
            info = RunInfo(asdict(cfg), run_dir, "bench")
            quiet = runner.Launch(progress_bar=False)
            summary = runner.run_synthesis(cfg, run_dir, NullTracker(), info, quiet)
        step_seconds = summary["seconds"] / steps
        sources, vgg = SourceImages.load(cfg), load_vgg(cfg)
        device_obj = torch.device(summary["device"])
        started = time.perf_counter()
        evaluator = build_evaluator(cfg, device_obj, sources, vgg)
        build_seconds = time.perf_counter() - started
        times = []
        for number in range(repeats):
            started = time.perf_counter()
            evaluate_file(evaluator, run_dir / "final.png")
            times.append(time.perf_counter() - started)
            log.info("evaluation %d: %.2f s", number + 1, times[-1])
    run_seconds = step_seconds * run_steps
    eval_seconds = float(np.mean(times))
    end_only = build_seconds + eval_seconds
    every_10 = build_seconds + (run_steps // 10) * eval_seconds
    return {
        "size": size, "steps_timed": steps, "run_steps": run_steps,
        "seconds_per_step": round(step_seconds, 3),
        "run_seconds_extrapolated": round(run_seconds, 1),
        "evaluator_build_seconds": round(build_seconds, 3),
        "evaluation_seconds": round(eval_seconds, 3),
        "evaluation_seconds_each": [round(t, 3) for t in times],
        "end_only_pct_of_run": round(100 * end_only / run_seconds, 2),
        "every_10_pct_of_run": round(100 * every_10 / run_seconds, 2),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="steps timed (then extrapolated)")
    parser.add_argument("--run-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    result = {
        "env": environment(args.device),
        **measure(args.device, args.size, args.steps, args.run_steps, args.repeats),
    }
    print_result(result, args.out, indent=2)
    return result


if __name__ == "__main__":
    main()
