"""GPU acceptance: everything a lent GPU must confirm, in one process, in under 8 minutes.

    python -m benchmarks.gpu_acceptance --out DIR            # on the GPU (bash benchmarks/gpu_run.sh)
    python -m benchmarks.gpu_acceptance --dry-run --out DIR  # CPU, tiny sizes: the same code paths

Phases, each recorded in DIR/gpu_acceptance.json as it ends (an error ends the phase, not the
run): the Python packages; the CUDA-only tests; single-image ms per evaluation at 512² against
the floor (forward + backward alone, replayed as a CUDA graph); one short run per feature through
the runner, whose summary.json must say `step_path: cuda_graph`; the batched sweep at 256² (each
job's summary.json must say so too); the pyramid at 1024. Writes DIR/RESULTS-section.md for
benchmarks/RESULTS.md. Exit code 0 only if every check passed; `--dry-run` expects the paths a
CPU takes (`eager`, reason `cpu`) and runs every phase at tiny sizes (a few features only),
pytest only collecting.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# import name -> what to install; the GPU machine lacks some (see WHEELS)
PACKAGES = {
    "torch": "torch", "torchvision": "torchvision", "hydra": "hydra-core",
    "omegaconf": "omegaconf", "wandb": "wandb", "numpy": "numpy", "PIL": "pillow",
    "imageio": "imageio", "tqdm": "tqdm", "skimage": "scikit-image", "scipy": "scipy",
    "matplotlib": "matplotlib", "yaml": "pyyaml", "pytest": "pytest",
}  # fmt: skip
WHEELS = (
    "carry them as wheels: /work/shared/gpu-wheels/README.md (copy the wheels to .whl/, name "
    "'.whl' in the call's carry, pip install --target /tmp/site and put it on PYTHONPATH)"
)
FLOOR_MS = 3.74  # H100, 512², forward + backward only, bf16, one CUDA graph (RESULTS.md anchors)
CUDA_TESTS = ["tests/test_optim.py", "tests/test_batch.py", "tests/test_capturable.py"]
CUDA_SELECTION = "cuda or captured"
# One short run per feature of the captured step (tests/test_capturable.py checks the same
# features for host reads on CPU).
FEATURES: dict[str, list[str]] = {
    "gram, L-BFGS armijo, keep=best": [],
    "gram, L-BFGS fixed step": ["optim.line_search=none"],
    "keep=last": ["keep=last"],
    "adam": ["optim=adam"],
    "ema, L-BFGS": ["optim.ema=0.9"],
    "ema, adam": ["optim=adam", "optim.ema=0.9"],
    "w2": ["statistic=w2"],
    "w2, fixed step": ["statistic=w2", "optim.line_search=none"],
    "masks": ["experiment=masks_offline"],
    "masks, w2": ["experiment=masks_offline", "statistic=w2"],
    "styles blended": ["pair=astronaut_blend"],
    "color=histogram": ["color=histogram"],
    "color=luminance": ["color=luminance"],
    "color=original": ["color=original"],
    "bf16": ["precision=bf16"],
    "bf16, w2, masks, adam": ["precision=bf16", "experiment=masks_offline", "statistic=w2",
                              "optim=adam"],
}  # fmt: skip


# The dry run's features: the mechanics once (every feature's step is checked on CPU by
# tests/test_capturable.py; a whole run of each takes minutes on a busy CPU).
DRY_FEATURES = ("gram, L-BFGS armijo, keep=best", "adam")


def missing_packages() -> list[str]:
    """The packages (as pip names them) that this Python cannot import."""
    return [pip for module, pip in PACKAGES.items() if importlib.util.find_spec(module) is None]


def sizes(dry: bool) -> dict[str, int]:
    """The workload: real sizes on the GPU, tiny ones for the dry run."""
    if dry:
        return {"floor": 32, "evals": 4, "feature": 32, "feature_steps": 4, "sweep": 32,
                "sweep_jobs": 2, "sweep_steps": 4, "pyramid": 64, "pyramid_min": 32,
                "pyramid_steps": 4}  # fmt: skip
    return {"floor": 512, "evals": 300, "feature": 256, "feature_steps": 12, "sweep": 256,
            "sweep_jobs": 16, "sweep_steps": 300, "pyramid": 1024, "pyramid_min": 256,
            "pyramid_steps": 100}  # fmt: skip


def expected_path(device: str) -> tuple[str, str | None]:
    """What summary.json must say for runs on `device`."""
    return ("cuda_graph", None) if device == "cuda" else ("eager", device)


def path_of(summary: dict[str, Any]) -> tuple[str | None, str | None]:
    return summary.get("step_path"), summary.get("step_path_reason")


def cuda_tests(dry: bool, out: Path) -> dict[str, Any]:
    """The CUDA-only tests (collected only, in the dry run)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS]
    command += ["-k", CUDA_SELECTION, *(["--collect-only"] if dry else [])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    (out / "pytest.log").write_text(done.stdout + done.stderr)
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return {"ok": done.returncode == 0, "rc": done.returncode, "last_line": last}


def floor(device: str, size: int, evals: int) -> dict[str, Any]:
    """Single-image ms per evaluation (the default L-BFGS) against the floor."""
    from benchmarks.engine import Problem, run_engine

    problem = Problem.make(device, size)
    run_engine(problem, 6)  # untimed: CUDA context, kernels, cuDNN autotuning
    result = run_engine(problem, evals)
    ms = result["ms_per_eval"]
    return {
        "ok": result["cuda_graph"] == (device == "cuda"), "size": size, "evals": evals,
        "ms_per_eval": ms, "steady_ms_per_eval": result["steady_ms_per_eval"],
        "floor_ms": FLOOR_MS, "over_floor": round(ms / FLOOR_MS, 2),
        "cuda_graph": result["cuda_graph"], "capture_seconds": result["capture_seconds"],
    }  # fmt: skip


def compose(*overrides: str) -> Any:
    """A run's config from conf/, as the CLI composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import stylelab.run  # noqa: F401  (registers the structured config)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_object(hydra_compose("config", overrides=list(overrides)))


def run_one(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """One run through the runner (as the CLI runs it, without W&B): its summary.json."""
    from stylelab.runner import run_synthesis
    from stylelab.tracking import NullTracker, RunInfo

    run_synthesis(compose(*overrides), run_dir, NullTracker(), RunInfo({}, run_dir, run_dir.name))
    return json.loads((run_dir / "summary.json").read_text())


def features(device: str, size: dict[str, int], root: Path) -> dict[str, Any]:
    """Each feature (and a pyramid, whose later stages rebuild their targets) as a short run;
    each one's recorded path must be the device's."""
    base = ["model.weights=random", "logger=none", f"device={device}", "log.image_every=1000"]
    base += [f"image_size={size['feature']}", f"steps={size['feature_steps']}"]
    pyramid = ["schedule=pyramid", f"image_size={size['pyramid']}"]
    pyramid += [f"schedule.min_size={size['pyramid_min']}"]
    chosen = FEATURES if device == "cuda" else {name: FEATURES[name] for name in DRY_FEATURES}
    runs = {**chosen, "pyramid": pyramid}
    want, rows = expected_path(device), {}
    for index, (name, overrides) in enumerate(runs.items()):
        try:
            summary = run_one([*base, *overrides], root / f"feature-{index}")
            rows[name] = {
                "step_path": summary["step_path"], "reason": summary["step_path_reason"],
                "capture_seconds": summary["capture_seconds"], "ok": path_of(summary) == want,
            }  # fmt: skip
        except Exception as error:
            rows[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
    return {"ok": all(row["ok"] for row in rows.values()), "runs": rows}


def sweep(device: str, size: dict[str, int], root: Path) -> dict[str, Any]:
    """The batched sweep against the basic launcher; every job's path must be the device's."""
    from benchmarks.sweep import engine_ms, whole_sweep

    args = argparse.Namespace(
        jobs=size["sweep_jobs"], steps=size["sweep_steps"], size=size["sweep"], device=device,
        weights="random", logger="none", batch_size=size["sweep_jobs"],
    )  # fmt: skip
    basic, batched = whole_sweep(args, "basic", root), whole_sweep(args, "batched", root)
    summaries = [json.loads(p.read_text()) for p in sorted(root.glob("batched/*/summary.json"))]
    paths = [path_of(summary) for summary in summaries]
    single, together = engine_ms(args, 1), engine_ms(args, args.jobs)
    return {
        "ok": len(paths) == args.jobs and all(p == expected_path(device) for p in paths),
        "jobs": args.jobs, "steps": args.steps, "size": args.size,
        "basic_seconds": round(basic["seconds"], 2), "batched_seconds": round(batched["seconds"], 2),
        "sweep_speedup": round(basic["seconds"] / batched["seconds"], 2),
        "engine_ms_per_image": {"single": round(single, 3), "batched": round(together, 3)},
        "batched_step_paths": sorted({f"{p} ({r})" if r else str(p) for p, r in paths}),
    }  # fmt: skip


def pyramid(device: str, size: dict[str, int]) -> dict[str, Any]:
    """Time to quality, coarse-to-fine against single size (benchmarks/pyramid.py)."""
    from benchmarks.pyramid import main as pyramid_main

    steps = size["pyramid_steps"]
    result = pyramid_main([
        "--device", device, "--size", str(size["pyramid"]), "--steps", str(steps),
        "--min-size", str(size["pyramid_min"]), "--coarse-steps", str(max(steps // 3, 2)),
    ])  # fmt: skip
    return {"ok": True, **result}


def markdown(result: dict[str, Any]) -> str:
    """The RESULTS.md section for this run."""
    env, lines = result["env"], []
    machine = env.get("gpu") or f"CPU {env.get('cpu')} (dry run)"
    lines += [f"## GPU acceptance (`benchmarks/gpu_run.sh`, issue 30): {machine}, "
              f"torch {env['torch']}, {result['date']}", ""]  # fmt: skip
    lines += ["| phase | ok | figures |", "|---|---|---|"]
    for name in ("packages", "cuda_tests", "floor", "features", "sweep", "pyramid"):
        phase = result.get(name, {"ok": False, "error": "not run"})
        figures = {k: v for k, v in phase.items() if k not in ("ok", "runs")}
        lines.append(f"| {name} | {'yes' if phase.get('ok') else '**no**'} | "
                     f"{json.dumps(figures)[:300]} |")  # fmt: skip
    runs = result.get("features", {}).get("runs", {})
    if runs:
        lines += ["", "| feature | step path | capture s |", "|---|---|---|"]
        for name, row in runs.items():
            path = row.get("step_path") or row.get("error", "")
            path += f" ({row['reason']})" if row.get("reason") else ""
            lines.append(f"| {name} | {path} | {row.get('capture_seconds')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "stylelab-gpu")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, pytest collects")
    parser.add_argument("--skip", default="", help="comma list of phases to leave out")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    missing = missing_packages()
    if missing:
        print(f"missing Python packages: {', '.join(missing)}; {WHEELS}", file=sys.stderr)
        return 2
    import torch

    from benchmarks.engine import environment

    device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:  # tiny tensors: threads only contend (also in the sweep's processes)
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run on the GPU machine, or use --dry-run", file=sys.stderr)
        return 2
    size, skip = sizes(args.dry_run), set(filter(None, args.skip.split(",")))
    result: dict[str, Any] = {
        "env": environment(device), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "dry_run": args.dry_run, "sizes": size, "packages": {"ok": True, "missing": []},
    }  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="acceptance-", dir=args.out))
    phases: dict[str, Callable[[], dict[str, Any]]] = {
        "cuda_tests": lambda: cuda_tests(args.dry_run, args.out),
        "floor": lambda: floor(device, size["floor"], size["evals"]),
        "features": lambda: features(device, size, work),
        "sweep": lambda: sweep(device, size, work),
        "pyramid": lambda: pyramid(device, size),
    }
    for name, phase in phases.items():
        started = time.perf_counter()
        try:
            result[name] = {"skipped": True, "ok": True} if name in skip else phase()
        except (Exception, SystemExit) as error:  # benchmarks.sweep exits on a failed sweep
            result[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
        result[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {json.dumps(result[name])[:600]}", file=sys.stderr, flush=True)
        (args.out / "gpu_acceptance.json").write_text(json.dumps(result, indent=1))
    (args.out / "RESULTS-section.md").write_text(markdown(result))
    failed = [name for name in phases if not result[name]["ok"]]
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all passed'}; "
          f"{args.out / 'gpu_acceptance.json'}, {args.out / 'RESULTS-section.md'}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
