"""ms per evaluation of a single run through `Synthesis.run` (the stage loop: frames, loss
flushes, observers) against the bare step loop of `benchmarks/engine.py`, interleaved in one
process; the fastest of `--repeats` each. `--overhead`: the loop's own cost, microseconds per
step of `Synthesis.run` with each step replaced by handing back ready loss terms.

    python -m benchmarks.single_run --device cpu --size 64 --evals 30 --repeats 5
    python -m benchmarks.single_run --overhead --evals 3000 --repeats 5
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from PIL import Image

from benchmarks.engine import Problem, backend_flags, engine_config, print_result, run_engine, sync
from stylelab.engine.loop import Observer, Result, RunState, Synthesis
from stylelab.engine.schedule import Stage
from stylelab.engine.synthesis import Synthesizer
from stylelab.factory import SourceImages, build_synthesis


def plan(problem: Problem, evals: int) -> Synthesis:
    cfg = engine_config(problem)
    cfg.steps = evals
    content, style = (Image.fromarray(picture) for picture in problem.pictures)
    return build_synthesis(cfg, SourceImages(content, [style])).synthesis


def run_loop(problem: Problem, evals: int) -> float:
    """ms per evaluation of `Synthesis.run` with the runner's default frames and flushes."""
    synthesis = plan(problem, evals)
    sync(problem.device)
    started = time.perf_counter()
    result = synthesis.run()
    sync(problem.device)
    return 1000 * (time.perf_counter() - started) / result.evaluations


def loop_overhead(problem: Problem, evals: int) -> float:
    """Microseconds per step of `Synthesis.run` whose steps only hand back loss terms."""
    synthesis = plan(problem, evals)
    terms = {name: torch.zeros((), device=problem.device) for name in synthesis.objective.names}

    def ready(synth: Synthesizer) -> dict[str, torch.Tensor]:
        synth.step_count += 1
        return terms

    class Clock(Observer):  # from the stage's start (its targets set) to the end
        def on_stage(self, run: RunState, stage: Stage) -> None:
            self.started = time.perf_counter()

        def on_end(self, run: RunState, result: Result) -> None:
            self.seconds = time.perf_counter() - self.started

    clock, real = Clock(), Synthesizer.step
    setattr(Synthesizer, "step", ready)  # noqa: B010 (a method replaced for the measurement)
    try:
        synthesis.run([clock])
        return 1e6 * clock.seconds / evals
    finally:
        setattr(Synthesizer, "step", real)  # noqa: B010


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--evals", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--overhead", action="store_true")
    args = parser.parse_args(argv)
    problem = Problem.make(args.device, args.size)
    if args.overhead:
        overheads = [loop_overhead(problem, args.evals) for _ in range(args.repeats)]
        result = {"loop_us_per_step": round(min(overheads), 2), "repeats": overheads}
        print_result(result)
        return result
    loop, bare = [], []
    with backend_flags(runner=True):
        run_loop(problem, 3)  # warm-up
        for _ in range(args.repeats):
            loop.append(run_loop(problem, args.evals))
            bare.append(run_engine(problem, args.evals)["ms_per_eval"])
    result = {
        "run_ms_per_eval": round(min(loop), 3),
        "bare_steps_ms_per_eval": round(min(bare), 3),
        "repeats": {"run": [round(x, 3) for x in loop], "bare": bare},
    }
    print_result(result)
    return result


if __name__ == "__main__":
    main()
