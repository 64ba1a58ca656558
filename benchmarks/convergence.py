"""Convergence benchmark: optimiser variants against the PyTorch tutorial's loop, per problem.

    python benchmarks/convergence.py --device cpu --size 128 --evals 300 --out-dir conv-cpu
    python benchmarks/convergence.py --device cuda --size 512 --weights imagenet
    python benchmarks/convergence.py --variant adam_avg optim.name=adam optim.lr=0.05 ...
    python benchmarks/convergence.py --starts 4 ...   # each problem from 4 starting images

A problem is a pair (conf/pair) x a layer set (conf/layers), on the tutorial's objective (no TV).
Each variant is a list of config overrides ("key=value", applied to stylelab.config.Config) and
turns into a synthesis through `build_synthesis`, the one place that knows the engine's classes;
the rest needs only `step()` (one evaluation, returning its loss terms) and the image. Every
variant runs at least `--evals` evaluations and at least as long as the tutorial took for them
(T), so it is compared at equal evaluations and at equal time. References: the tutorial's loop
(benchmarks/baseline.py, which defines T and the target loss), torch.optim.LBFGS with its
strong-Wolfe line search and SciPy's L-BFGS-B (the textbook bounded quasi-Newton method: box
[0, 1], its Moré-Thuente line search, as much history as the default), all on the same
objective, evaluations counted. L-BFGS-B runs in float64 on the host: its time includes a copy
each way per evaluation (no cost on the CPU; compare it on a GPU by evaluations).

A fixed-step L-BFGS is chaotic: on a nonconvex loss, a start moved by 1e-3 per pixel can end in
another valley. `--starts K` runs every problem from K starting images (start 0: the content
image; start k: plus uniform noise of +-`--start-noise`, seeded with k, the same for every run)
and reports, per problem and run, the spread of best@N over the starts and on how many starts it
was no worse than the tutorial from the same start.

Writes convergence.json, convergence.md and one loss-against-time plot per problem (PNG) into
--out-dir; prints the markdown. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from benchmarks import baseline  # noqa: E402
from benchmarks.engine import backend_flags, environment, sync  # noqa: E402
from stylelab.config import Config, validate  # noqa: E402
from stylelab.engine.synthesis import TRIAL  # noqa: E402

log = logging.getLogger("convergence")

PAIRS = ("astronaut_hubble", "chelsea_immuno", "coffee_hubble", "rocket_immuno")
LAYER_SETS = ("approach1", "approach2")
BASE_OVERRIDES = ["tv_weight=0", "content_weight=1", "style_weight=1e6", "init=content"]
VARIANTS: dict[str, list[str]] = {
    "lbfgs": ["optim.name=lbfgs", "optim.lr=1.0", "optim.line_search=none"],  # until issue 15
    "lbfgs_armijo": ["optim.name=lbfgs", "optim.lr=1.0", "optim.line_search=armijo"],  # default
    # The averaged image does not change Adam's trajectory: this one run gives Adam's iterate
    # (the trace) and, at the end, the total at its averaged image (`ema_final_total`).
    "adam": ["optim.name=adam", "optim.lr=0.02", "optim.ema=0.9"],
    # One more variant is one more entry, or `--variant NAME KEY=VALUE ...`.
}
TUTORIAL, STRONG_WOLFE, LBFGSB = "tutorial", "torch_strong_wolfe", "scipy_lbfgsb"
RISE = 0.01  # the goal's limit: a logged loss more than 1% above the one before


# ---- the adapter: Config -> synthesis (the only code that knows the engine's classes) -------


@dataclass
class Synthesis:
    """What the benchmark needs of a synthesis.

    `step()` does one evaluation and returns its logged loss terms (device tensors: with a
    line search, the iterate's, plus `trial/total` of the point evaluated and `accepted`, whether
    it became the iterate); `objective(image)` gives
    the terms at any image, in fp32 (for the reference optimisers); `averaged()`, with
    `optim.ema`, the total at the averaged image.
    """

    step: Callable[[], dict[str, torch.Tensor]]
    image: torch.Tensor
    objective: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    info: dict[str, Any] = field(default_factory=dict)
    averaged: Callable[[], float] | None = None


def build_synthesis(cfg: Config, start: int = 0, noise: float = 0.0) -> Synthesis:
    """A ready synthesis, built by stylelab's factory exactly as a run builds it (from start
    image `start`: see `perturbed`)."""
    from stylelab import factory

    built = factory.build_synthesis(cfg)
    synth = built.synthesis.enter_stage(0)
    if start:  # before the first step: nothing (optimiser, best, average) has seen the image yet
        synth.image.copy_(perturbed(synth.image.cpu(), start, noise).to(synth.image.device))

    def step() -> dict[str, torch.Tensor]:
        terms = synth.step()
        accepted = getattr(synth.optimizer, "accepted", None)
        return terms if accepted is None else {**terms, "accepted": accepted.float()}

    def averaged() -> float:
        with torch.no_grad():
            return float(built.synthesis.objective(synth.display_image)["total"])

    size = list(synth.image.shape[-2:])
    info = {"precision": built.precision, "device": str(built.device), "size": size}
    has_average = synth.average is not None
    return Synthesis(
        step, synth.image, built.synthesis.objective, info, averaged if has_average else None
    )


def perturbed(image: torch.Tensor, start: int, noise: float) -> torch.Tensor:
    """Start image `start`, a new tensor: a copy of `image` for 0, else `image` plus uniform
    noise in +-`noise` drawn with seed `start` (CPU generator: the same on every device),
    clamped to [0, 1]."""
    if not start:
        return image.clone()
    generator = torch.Generator().manual_seed(start)
    return (image + noise * (2 * torch.rand(image.shape, generator=generator) - 1)).clamp(0, 1)


def load_pair(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Content and (first) style at the run's size, as the factory sizes them."""
    from stylelab import factory

    images = factory.StageImages(factory.SourceImages.load(cfg), cfg, torch.device("cpu"))
    content, styles = images(cfg.image_size)
    return content, styles[0]


# ---- configs ---------------------------------------------------------------------------------


def make_config(pair: str, layers: str, overrides: list[str]) -> Config:
    """conf/pair/<pair>.yaml and conf/layers/<layers>.yaml, then the overrides, as a Config."""
    cfg = OmegaConf.structured(Config)
    groups = {
        "pair": OmegaConf.load(ROOT / "conf" / "pair" / f"{pair}.yaml"),
        "layers": OmegaConf.load(ROOT / "conf" / "layers" / f"{layers}.yaml"),
    }
    cfg = OmegaConf.merge(cfg, groups, OmegaConf.from_dotlist(overrides))
    config = OmegaConf.to_object(cfg)
    validate(config)
    return config


def tutorial_names(indices: list[int]) -> list[str]:
    """torchvision `features` indices -> the tutorial's module names (conv_N, relu_N, pool_N)."""
    from stylelab.engine.features import LAYER_NAMES, parse_layers

    names = []
    for index in parse_layers(indices):
        convs = sum(name.startswith("conv") for name in LAYER_NAMES[: index + 1])
        names.append(f"{LAYER_NAMES[index][:4]}_{convs}")
    return names


# ---- drivers: each returns a Trace of every evaluation -----------------------------------------


@dataclass
class Trace:
    """Per evaluation: seconds since the loop started, the total logged (a line search logs its
    iterate's), the total of the point evaluated, and whether that point was accepted."""

    seconds: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    evaluated: list[float] = field(default_factory=list)
    accepted: list[bool] = field(default_factory=list)


class TimedHistory(list):
    """The tutorial's history list, also noting when each evaluation was appended."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.perf_counter())
        super().append(item)


def run_tutorial(cfg: Config, evals: int, start: int = 0, noise: float = 0.0) -> Trace:
    """benchmarks/baseline.py's loop (torch.optim.LBFGS at its defaults, fp32, frozen VGG),
    from start image `start` (see `perturbed`).

    Its set-up (model build, targets) is left out of the time: the clock starts one median
    evaluation before the first evaluation ends.
    """
    from stylelab.engine.device import resolve_device
    from stylelab.engine.features import IMAGENET_MEAN, IMAGENET_STD, load_vgg19_features

    device = resolve_device(cfg.device)
    content, style = load_pair(cfg)
    first = perturbed(content, start, noise).to(device)
    content, style = content.to(device), style.to(device)
    cnn = load_vgg19_features(cfg.model.weights, seed=cfg.seed).to(device).eval()
    mean, std = torch.tensor(IMAGENET_MEAN).to(device), torch.tensor(IMAGENET_STD).to(device)
    history = TimedHistory()
    with backend_flags(runner=False):
        baseline.run_style_transfer(
            cnn, mean, std, content, style, first, num_evals=evals,
            style_weight=cfg.style_weight, content_weight=cfg.content_weight,
            content_layers=tutorial_names(cfg.layers.content),
            style_layers=tutorial_names(cfg.layers.style), freeze=True, history=history,
        )  # fmt: skip
    gaps = sorted(b - a for a, b in itertools.pairwise(history.times))
    start = history.times[0] - (gaps[len(gaps) // 2] if gaps else 0.0)
    totals = [s + c for s, c in history]
    return Trace([t - start for t in history.times], totals, totals, [True] * len(totals))


def budget_spent(count: int, elapsed: float, evals: int, seconds: float, max_evals: int) -> bool:
    """Every run's stopping rule: at least `evals` evaluations and `seconds`, or `max_evals`."""
    return (count >= evals and elapsed >= seconds) or count >= max_evals


def run_steps(synthesis: Synthesis, evals: int, seconds: float, max_evals: int) -> Trace:
    """`step()` until at least `evals` evaluations and `seconds` have passed (or `max_evals`).

    Losses are read back every evaluation on the CPU (free there) and every 10 on CUDA (as the
    runner does; each evaluation then gets the time of the read-back that covered it).
    """
    device = synthesis.image.device
    every = 1 if device.type == "cpu" else 10
    trace, pending = Trace(), []
    sync(device)
    started = time.perf_counter()
    while True:
        terms = synthesis.step()
        accepted = terms.get("accepted", torch.ones((), device=device))
        evaluated = terms.get(TRIAL, terms["total"])
        pending.append(torch.stack([terms["total"].float(), evaluated.float(), accepted.float()]))
        if len(pending) == every:
            rows = torch.stack(pending).cpu().tolist()  # waits for the device
            now, pending = time.perf_counter() - started, []
            trace.seconds += [now] * len(rows)
            trace.total += [row[0] for row in rows]
            trace.evaluated += [row[1] for row in rows]
            trace.accepted += [row[2] > 0.5 for row in rows]
            count = len(trace.total)
            if budget_spent(count, now, evals, seconds, max_evals):
                return trace


def run_strong_wolfe(synthesis: Synthesis, evals: int, seconds: float, max_evals: int) -> Trace:
    """torch.optim.LBFGS(line_search_fn="strong_wolfe") on the synthesis' objective, called as
    the tutorial calls it (closure clamps, reads the loss back every evaluation)."""
    image = synthesis.image.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([image], line_search_fn="strong_wolfe")
    trace, started = Trace(), time.perf_counter()

    def closure() -> torch.Tensor:
        with torch.no_grad():
            image.clamp_(0, 1)
        optimizer.zero_grad()
        total = synthesis.objective(image)["total"]
        total.backward()
        trace.total.append(total.item())
        trace.evaluated.append(trace.total[-1])
        trace.seconds.append(time.perf_counter() - started)
        trace.accepted.append(True)
        return total

    while not trace.total or not budget_spent(
        len(trace.total), trace.seconds[-1], evals, seconds, max_evals
    ):
        optimizer.step(closure)
    return trace


class _Enough(Exception):
    """Raised from L-BFGS-B's objective to end the run at the benchmark's budget."""


def run_lbfgsb(
    synthesis: Synthesis, evals: int, seconds: float, max_evals: int, history_size: int
) -> Trace:
    """scipy.optimize's L-BFGS-B on the synthesis' objective, pixels bounded to [0, 1].

    Its logged total is the iterate's (the point each iteration accepts, which is the last one
    its line search evaluated), as for the engine's line search; every evaluation is kept.
    """
    import numpy as np
    from scipy.optimize import Bounds, minimize

    image, device = synthesis.image.detach(), synthesis.image.device
    trace, started = Trace(), time.perf_counter()

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.from_numpy(flat).to(device, torch.float32).view(image.shape).requires_grad_()
        total = synthesis.objective(x)["total"]
        total.backward()
        value, grad = total.item(), x.grad.double().cpu().numpy().ravel()
        trace.evaluated.append(value)
        trace.seconds.append(time.perf_counter() - started)
        trace.accepted.append(not trace.total)  # the start; later ones when the iteration ends
        trace.total.append(value if not trace.total else trace.total[-1])
        if budget_spent(len(trace.total), trace.seconds[-1], evals, seconds, max_evals):
            raise _Enough
        return value, grad

    def accept(_: np.ndarray) -> None:  # once per iteration: the last point evaluated is taken
        trace.accepted[-1], trace.total[-1] = True, trace.evaluated[-1]

    start = image.double().cpu().numpy().ravel()
    options = {"maxcor": history_size, "maxfun": max_evals + 1, "maxiter": max_evals + 1}
    options.update(ftol=0.0, gtol=0.0)  # run the whole budget
    with contextlib.suppress(_Enough):
        minimize(objective, start, jac=True, method="L-BFGS-B", bounds=Bounds(0.0, 1.0),
                 callback=accept, options=options)  # fmt: skip
    return trace


# ---- metrics -----------------------------------------------------------------------------------


def rises(values: list[float], limit: float = 0.0) -> tuple[int, float]:
    """How many times a value exceeds the one before by more than `limit` (relative), and the
    largest relative rise (0 when none)."""
    steps = [(b - a) / abs(a) for a, b in itertools.pairwise(values) if a != 0]
    return sum(rise > limit for rise in steps), max([0.0, *steps])


def time_to_reach(trace: Trace, target: float) -> float | None:
    return next((t for t, v in zip(trace.seconds, trace.total, strict=True) if v <= target), None)


def metrics(trace: Trace, evals: int, seconds: float, target: float) -> dict[str, Any]:
    """Best logged total at `evals` evaluations and at `seconds`, the logged total at `evals`
    (what a loop that returns its current image, as the tutorial's does, hands out), rises of
    the logged totals and of every point evaluated, time to the `target` loss."""
    head = trace.total[:evals]
    in_time = [v for t, v in zip(trace.seconds, trace.total, strict=True) if t <= seconds]
    accepted = sum(trace.accepted[:evals])
    logged_rises, logged_max = rises(head, RISE)
    evaluated_rises, evaluated_max = rises(trace.evaluated[:evals], RISE)
    reached = time_to_reach(trace, target)
    evals_to_target = next((i + 1 for i, v in enumerate(trace.total) if v <= target), None)
    finite = [v for v in trace.total if math.isfinite(v)]
    return {
        "evals": len(trace.total), "seconds": round(trace.seconds[-1], 3),
        "ms_per_eval": round(1000 * trace.seconds[-1] / len(trace.total), 2),
        "first_total": trace.total[0], "best_at_evals": min(head), "at_evals": head[-1],
        "best_at_time": min(in_time) if in_time else None,
        "best_overall": min(finite) if finite else None,
        "rises_any": rises(head)[0], "rises_over_1pct": logged_rises,
        "max_rise_pct": 100 * logged_max, "evaluated_rises_over_1pct": evaluated_rises,
        "evaluated_max_rise_pct": 100 * evaluated_max,
        "rejected": evals - accepted if len(head) == evals else None,
        "seconds_to_target": None if reached is None else round(reached, 3),
        "time_ratio_to_target": None if reached is None else round(reached / seconds, 3),
        "evals_to_target": evals_to_target,  # independent of the machine's load
    }  # fmt: skip


def goals(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, bool]:
    """The issue's goals for one variant on one problem (rises of the logged totals)."""
    ratio = row["time_ratio_to_target"]
    return {
        "no_worse_at_evals": row["best_at_evals"] <= reference["best_at_evals"],
        "no_rise_over_1pct": row["rises_over_1pct"] == 0,
        "half_the_time": ratio is not None and ratio <= 0.5,
    }


# ---- one problem -------------------------------------------------------------------------------


def base_overrides(args: argparse.Namespace) -> list[str]:
    return [
        *BASE_OVERRIDES, f"model.weights={args.weights}", f"image_size={args.size}",
        f"device={args.device}", f"precision={args.precision}", f"seed={args.seed}",
    ]  # fmt: skip


def run_problem(
    pair: str, layers: str, args: argparse.Namespace, variants: dict[str, list[str]], start: int = 0
) -> tuple[dict[str, Any], dict[str, Trace]]:
    """The tutorial first (it sets the time T and the target), then every variant; all from
    start image `start`."""
    base, noise = base_overrides(args), args.start_noise
    tutorial_cfg = make_config(pair, layers, base + VARIANTS["lbfgs"])
    tutorial = run_tutorial(tutorial_cfg, args.evals, start, noise)
    budget = tutorial.seconds[min(args.evals, len(tutorial.seconds)) - 1]
    target = min(tutorial.total[: args.evals])
    traces, limit = {TUTORIAL: tutorial}, args.max_factor * args.evals
    info, averaged = {}, {}
    for name, overrides in variants.items():
        log.info("%s/%s: %s %s", pair, layers, name, " ".join(overrides))
        synthesis = build_synthesis(make_config(pair, layers, base + overrides), start, noise)
        info = synthesis.info
        traces[name] = run_steps(synthesis, args.evals, budget, limit)
        if synthesis.averaged is not None:
            averaged[name] = synthesis.averaged()
    if not args.skip_strong_wolfe:
        log.info("%s/%s: %s", pair, layers, STRONG_WOLFE)
        synthesis = build_synthesis(tutorial_cfg, start, noise)  # the tutorial's objective
        traces[STRONG_WOLFE] = run_strong_wolfe(synthesis, args.evals, budget, limit)
    if not args.skip_lbfgsb:
        log.info("%s/%s: %s", pair, layers, LBFGSB)
        synthesis = build_synthesis(tutorial_cfg, start, noise)
        history = tutorial_cfg.optim.history_size  # the default's memory
        traces[LBFGSB] = run_lbfgsb(synthesis, args.evals, budget, limit, history)
    runs = {name: metrics(trace, args.evals, budget, target) for name, trace in traces.items()}
    for name, value in averaged.items():
        runs[name]["ema_final_total"] = value
    for row in runs.values():
        row["goals"] = goals(row, runs[TUTORIAL])
    result = {"time_budget_seconds": round(budget, 3), "target_total": target, **info}
    result.update(problem=f"{pair}/{layers}", start=start)
    return {**result, "runs": runs}, traces


def plot(name: str, traces: dict[str, Trace], budget: float, target: float, path: Path) -> None:
    """Logged total against time and against evaluations (log scale), one line per run; a
    line search's rejected trials as dots of the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_time, by_evals) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, trace in traces.items():
        line = by_time.plot(trace.seconds, trace.total, label=label, linewidth=1)[0]
        by_evals.plot(range(1, len(trace.total) + 1), trace.total, color=line.get_color(), lw=1)
        trials = [(i, t, v) for i, (t, v, ok) in enumerate(zip(
            trace.seconds, trace.evaluated, trace.accepted, strict=True)) if not ok]  # fmt: skip
        if trials:
            index, seconds, values = zip(*trials, strict=True)
            dots = {"color": line.get_color(), "s": 4, "alpha": 0.5}
            by_time.scatter(seconds, values, **dots)
            by_evals.scatter([i + 1 for i in index], values, **dots)
    for axis, xlabel in ((by_time, "seconds"), (by_evals, "evaluations")):
        axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.axhline(target, color="grey", linestyle=":", linewidth=1)
        axis.grid(alpha=0.3)
    by_time.axvline(budget, color="grey", linestyle="--", linewidth=1)
    by_time.set_ylabel("total loss logged (dots: rejected trials)")
    by_time.legend(fontsize=8)
    figure.suptitle(f"{name}: dotted = tutorial's best in its evaluations, dashed = its time")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# ---- report ------------------------------------------------------------------------------------


def summarise(problems: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per run over all problems: goals met, geometric mean of best totals vs the tutorial's."""
    names = next(iter(problems.values()))["runs"].keys()
    summary = {}
    for name in names:
        rows = [(p["runs"][name], p["runs"][TUTORIAL]) for p in problems.values()]
        log_ratio = [math.log(r["best_at_evals"] / t["best_at_evals"]) for r, t in rows]
        timed = [(r["best_at_time"], t["best_at_time"]) for r, t in rows]
        time_log = [math.log(a / b) for a, b in timed if a is not None and b is not None]
        met = {key: sum(r["goals"][key] for r, _ in rows) for key in rows[0][0]["goals"]}
        handed_out = sum(r["best_at_evals"] <= t["at_evals"] for r, t in rows)
        summary[name] = {
            "problems": len(rows),
            "best_at_evals_vs_tutorial_geomean": round(math.exp(sum(log_ratio) / len(rows)), 4),
            "best_at_time_vs_tutorial_geomean": (  # None: a run had no evaluation within T
                round(math.exp(sum(time_log) / len(rows)), 4)
                if len(time_log) == len(rows)
                else None
            ),
            "goals_met": met,
            "best_at_evals_no_worse_than_tutorial_at_evals": handed_out,
            "logged_rises_over_1pct": sum(r["rises_over_1pct"] for r, _ in rows),
        }
    return summary


def spread(problems: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per problem (over its starts) and run: best@N at each start, and on how many starts it
    was no worse than the tutorial from the same start."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in problems.values():
        for name, row in entry["runs"].items():
            cell = table.setdefault(entry["problem"], {}).setdefault(
                name, {"best_at_evals": [], "no_worse_than_tutorial": 0}
            )
            cell["best_at_evals"].append(row["best_at_evals"])
            cell["no_worse_than_tutorial"] += row["goals"]["no_worse_at_evals"]
    return table


def reached(ratio: float | None, evals: int | None) -> str:
    return "never" if ratio is None or evals is None else f"{ratio:.2f} ({evals})"


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def markdown(result: dict[str, Any]) -> str:
    evals = result["settings"]["evals"]
    lines = [
        f"N = {evals} evaluations; T = the tutorial's seconds for N. best@N, best@T: lowest total "
        "logged. reach: seconds to the tutorial's best@N, as a fraction of T (and evaluations to "
        "it, out of N). at N: the total logged at evaluation N (the tutorial's loop returns "
        "that image; the engine keeps its best@N). rises: logged "
        "totals > 1% above the one before / the same over every point evaluated (a line search "
        "logs its iterate; its rejected trials are `trial/total`). rej: rejected line-search "
        "trials in N. avg@end: total at the averaged image (optim.ema) after the run.",
        "",
        "| problem | run | best@N | at N | best@T | evals by T | reach / T (evals) "
        "| rises logged / all | rej | ms/eval | avg@end |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for problem, entry in result["problems"].items():
        for name, row in entry["runs"].items():
            reach = row["time_ratio_to_target"]
            evals_by_t = entry["evals_by_time"][name]
            lines.append(
                f"| {problem} | {name} | {row['best_at_evals']:.4g} | {row['at_evals']:.4g} "
                f"| {fmt(row['best_at_time'])} "
                f"| {evals_by_t} | {reached(reach, row.get('evals_to_target'))} "
                f"| {row['rises_over_1pct']} / {row['evaluated_rises_over_1pct']} "
                f"| {row['rejected'] if row['rejected'] is not None else '-'} "
                f"| {row['ms_per_eval']} | {fmt(row.get('ema_final_total'))} |"
            )
    lines += ["", "| run | best@N / tutorial (geomean) | best@T / tutorial | goals met "
              "| best@N <= tutorial's at N |", "|---|---|---|---|---|"]  # fmt: skip
    for name, row in result["summary"].items():
        met = ", ".join(f"{k} {v}/{row['problems']}" for k, v in row["goals_met"].items())
        lines.append(
            f"| {name} | {row['best_at_evals_vs_tutorial_geomean']} "
            f"| {row['best_at_time_vs_tutorial_geomean']} | {met} "
            f"| {row['best_at_evals_no_worse_than_tutorial_at_evals']}/{row['problems']} |"
        )
    if result["settings"]["starts"] > 1:
        lines += ["", f"Over {result['settings']['starts']} starts (start noise "
                  f"{result['settings']['start_noise']}): best@N min / median / max, and the starts "
                  "on which it was no worse than the tutorial from the same start.", "",
                  "| problem | run | best@N min | median | max | no worse |", "|---|---|---|---|---|---|"]  # fmt: skip
        for problem, runs in result["spread"].items():
            for name, cell in runs.items():
                values = sorted(cell["best_at_evals"])
                wins = f"{cell['no_worse_than_tutorial']}/{len(values)}"
                lines.append(
                    f"| {problem} | {name} | {values[0]:.4g} | {statistics.median(values):.4g} "
                    f"| {values[-1]:.4g} | {'–' if name == TUTORIAL else wins} |"
                )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--evals", type=int, default=300)
    parser.add_argument("--weights", default="random", help="imagenet | random | <file>")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16 (engine runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--starts", type=int, default=1, help="starting images per problem")
    parser.add_argument("--start-noise", type=float, default=1e-3, help="+- per pixel, start >= 1")
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS))
    parser.add_argument("--layers", nargs="+", default=list(LAYER_SETS))
    parser.add_argument("--only", nargs="+", help="run only these variants (names)")
    parser.add_argument(
        "--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
        help="add or replace a variant: a name and its config overrides",
    )  # fmt: skip
    parser.add_argument("--max-factor", type=int, default=20, help="evaluation cap: x evals")
    parser.add_argument("--skip-strong-wolfe", action="store_true")
    parser.add_argument("--skip-lbfgsb", action="store_true", help="no SciPy L-BFGS-B reference")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared machine)")
    parser.add_argument("--out-dir", type=Path, default=Path("convergence-results"))
    args = parser.parse_args(argv)
    if args.starts < 1:
        parser.error(f"--starts {args.starts}: must be at least 1")
    return args


def chosen_variants(args: argparse.Namespace) -> dict[str, list[str]]:
    variants = dict(VARIANTS)
    for name, *overrides in args.variant:
        variants[name] = overrides
    if args.only:
        variants = {name: variants[name] for name in args.only}
    return variants


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = chosen_variants(args)
    warm = make_config(args.pairs[0], args.layers[0], base_overrides(args))
    run_tutorial(warm, 3)  # untimed warm-up: thread pools, allocator, first-call costs
    settings = {**{k: v for k, v in vars(args).items() if k != "out_dir"}, "variants": variants}
    result: dict[str, Any] = {"env": environment(args.device), "settings": settings}
    problems: dict[str, dict[str, Any]] = {}
    for pair in args.pairs:
        for layers in args.layers:
            for start in range(args.starts):
                name = f"{pair}/{layers}" + (f"@start{start}" if start else "")
                entry, traces = run_problem(pair, layers, args, variants, start)
                path = args.out_dir / (name.replace("/", "_").replace("@", "_") + ".png")
                budget = entry["time_budget_seconds"]
                plot(name, traces, budget, entry["target_total"], path)
                entry["plot"] = str(path)
                entry["evals_by_time"] = {
                    key: sum(t <= budget for t in trace.seconds) for key, trace in traces.items()
                }
                problems[name] = entry
                table = write(result, problems, args.out_dir)  # after each: partial results
    print(table)
    return result


def write(result: dict[str, Any], problems: dict[str, Any], out_dir: Path) -> str:
    result.update(problems=problems, summary=summarise(problems), spread=spread(problems))
    table = markdown(result)
    (out_dir / "convergence.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "convergence.md").write_text(table)
    return table


if __name__ == "__main__":
    main()
