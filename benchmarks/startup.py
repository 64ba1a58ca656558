"""Job start-up: where a batched sweep's jobs spend their time before the first step.

Runs `python -m stylelab.run -m hydra/launcher=batched` (N jobs, one batch, 32 px, 1 step) in a
fresh interpreter with timing wrappers (`time.perf_counter`) around the start-up phases, and
reports seconds per job: the whole start-up (from the command's first line to the batch's first
step, over N), each phase (inclusive: a phase's time contains its sub-phases'), and the jobs'
close after the batch (results, evaluation, W&B finish).

    python -m benchmarks.startup                        # logger=none and logger=wandb (offline)
    python -m benchmarks.startup --jobs 16 --loggers none --repeats 3

Writes benchmarks/results/cpu-startup.json and prints a markdown table (fastest repeat).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
# (module, attribute path, phase): wrapped where the callers look the name up.
PHASES = [
    ("hydra.plugins.sweeper", "Sweeper.validate_batch_is_legal", "sweeper: compose to check"),
    ("hydra_plugins.stylelab_launchers.sequential_launcher", "job_config", "compose job config"),
    ("hydra_plugins.stylelab_launchers.batch_jobs", "JobHalves.open", "open job (all below)"),
    ("hydra.core.utils", "_save_config", "  .hydra files"),
    ("stylelab.run", "prepare_run", "  run folder checks"),
    ("stylelab.run", "check_job", "  config checks (preflight)"),
    ("stylelab.run", "multirun_sweep_keys", "  swept keys"),
    ("stylelab.run", "make_tracker", "  make tracker"),
    ("stylelab.runner", "validate", "  config checks (runner)"),
    ("stylelab.tracking.base", "NullTracker.start", "  tracker start"),
    ("stylelab.tracking.base", "BackgroundTracker.start", "  tracker start"),
    ("stylelab.runner", "build_synthesis", "  build synthesis"),
    ("stylelab.factory", "SourceImages.load", "    decode inputs"),
    ("stylelab.factory", "load_vgg", "    load VGG"),
    ("stylelab.factory", "check_sizes", "    resize inputs, check sizes"),
    ("stylelab.runner", "describe", "  describe"),
    ("stylelab.runner", "check_memory", "  check memory"),
    ("stylelab.runner", "digests", "  input digests"),
    ("stylelab.outputs", "RunFolder.save_image", "  save input images"),
    ("hydra_plugins.stylelab_launchers.batch_jobs", "JobHalves.close", "close job (after)"),
]
FIRST_STEP = ("hydra_plugins.stylelab_launchers.batch_jobs", "run_batch")


def instrument(totals: dict[str, float], marks: dict[str, float]) -> None:
    """Wrap each phase's function so that its calls add their seconds to `totals`."""
    for module_name, path, phase in PHASES:
        owner: Any = importlib.import_module(module_name)
        *outer, name = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        original = inspect.getattr_static(owner, name)
        setattr(owner, name, _timed(original, phase, totals))
    module = importlib.import_module(FIRST_STEP[0])
    run_batch = getattr(module, FIRST_STEP[1])

    @functools.wraps(run_batch)
    def first(*args: Any, **kwargs: Any) -> Any:
        marks.setdefault("first_step", time.perf_counter())
        return run_batch(*args, **kwargs)

    setattr(module, FIRST_STEP[1], first)


def _timed(function: Any, phase: str, totals: dict[str, float]) -> Any:
    if isinstance(function, staticmethod | classmethod):
        return type(function)(_timed(function.__func__, phase, totals))

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[phase] += time.perf_counter() - started

    return wrapper


def child(out: Path, argv: list[str]) -> None:
    """In the fresh interpreter: run the sweep with the wrappers, write the timings."""
    began = time.perf_counter()
    totals: dict[str, float] = defaultdict(float)
    marks: dict[str, float] = {}
    from hydra.core.plugins import Plugins

    Plugins.instance()  # its scan runs the plugin modules again: wrap what it defined
    instrument(totals, marks)
    from stylelab.run import main

    imported = time.perf_counter()
    sys.argv = ["stylelab.run", *argv]
    try:
        main()
    except SystemExit as exit:
        if exit.code:
            raise
    ended = time.perf_counter()
    out.write_text(json.dumps({
        "imports": imported - began, "to_first_step": marks["first_step"] - imported,
        "total": ended - imported, "phases": totals,
    }))  # fmt: skip


def sweep_overrides(jobs: int, logger: str, sweep_dir: Path) -> list[str]:
    weights = ",".join(str(1000 * (i + 1)) for i in range(jobs))
    return [
        "-m", "hydra/launcher=batched", f"hydra.launcher.batch_size={jobs}",
        "model.weights=random", "image_size=32", "steps=1", f"logger={logger}",
        f"style_weight={weights}", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip


def measure(jobs: int, logger: str, root: Path) -> dict[str, Any]:
    sweep_dir = root / f"{logger}-{time.monotonic_ns()}"
    out = root / "timings.json"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks.startup", "--child", str(out)]
    done = subprocess.run(
        [*command, "--", *sweep_overrides(jobs, logger, sweep_dir)],
        cwd=root, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{done.stderr[-3000:]}")
    timings = json.loads(out.read_text())
    return {
        "per_job_before_first_step": timings["to_first_step"] / jobs,
        "phases_per_job": {k: v / jobs for k, v in timings["phases"].items()},
        "command_seconds": timings["total"],
        "imports": timings["imports"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--loggers", nargs="+", default=["none", "wandb"])
    parser.add_argument("--repeats", type=int, default=2, help="interleaved; the fastest kept")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        return child(args.child, [a for a in rest if a != "--"])
    runs: dict[str, list[dict[str, Any]]] = {logger: [] for logger in args.loggers}
    with tempfile.TemporaryDirectory(prefix="stylelab-startup-") as tmp:
        for _ in range(args.repeats):
            for logger in args.loggers:
                runs[logger].append(measure(args.jobs, logger, Path(tmp)))
    best = {k: min(v, key=lambda r: r["per_job_before_first_step"]) for k, v in runs.items()}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "cpu-startup.json"
    out.write_text(json.dumps({"jobs": args.jobs, "fastest": best, "runs": runs}, indent=2))
    print(f"| {args.jobs} jobs, batched, 32 px, s per job | " + " | ".join(
        f"logger={k}" for k in best) + " |")  # fmt: skip
    print("|---|" + "---|" * len(best))
    row = lambda name, values: print(f"| {name} | " + " | ".join(values) + " |")  # noqa: E731
    row(
        "**before the first step**",
        [f"**{r['per_job_before_first_step']:.3f}**" for r in best.values()],
    )
    for phase in dict.fromkeys(phase for _, _, phase in PHASES):
        shown = "· " * ((len(phase) - len(phase.lstrip())) // 2) + phase.lstrip()
        row(shown, [f"{r['phases_per_job'].get(phase, 0.0):.3f}" for r in best.values()])
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
