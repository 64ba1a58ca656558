"""The benchmark runs end to end on the CPU in CI size and reports every field (not its speed)."""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import ROOT

RUN_FIELDS = {"ms_per_eval", "seconds", "evals", "peak_memory_mib", "first_loss", "final_loss"}


def test_bench_cpu_reports_json(tmp_path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_API_KEY", None)
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench.py"),
        "--device",
        "cpu",
        "--size",
        "32",
        "--evals",
        "5",
    ]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    for name in ("baseline", "baseline_frozen", "stylelab", "adam"):
        assert set(result[name]) >= RUN_FIELDS, (name, result[name])
        assert result[name]["ms_per_eval"] > 0 and result[name]["peak_memory_mib"] > 0
    assert result["baseline"]["evals"] >= 5 and result["stylelab"]["evals"] == 5
    # the same objective: both evaluate the same loss at the same starting image (the default
    # engine may compute in bf16 here; its fp32 variant matches closely)
    first = result["baseline"]["first_loss"]
    assert math.isclose(first, result["variants"]["fp32"]["first_loss"], rel_tol=1e-4)
    assert math.isclose(first, result["stylelab"]["first_loss"], rel_tol=2e-2)
    assert result["speedup"] > 0 and result["speedup_vs_frozen"] > 0
    assert all(set(row) >= RUN_FIELDS for row in result["variants"].values())
    for name in ("wandb", "wandb_background"):
        assert {"seconds", "wall", "overhead_pct_seconds", "overhead_pct_wall"} <= set(
            result["wandb"][name]
        )
    assert result["memory"] == {"skipped": "needs CUDA"}
    assert result["targets"]["met"].keys() == {"speedup"}
    assert result["env"]["device"] == "cpu" and result["env"]["cpu"]


def test_the_cpu_is_named_with_its_family_and_model(tmp_path) -> None:
    from benchmarks.engine import cpu_name

    cpuinfo = tmp_path / "cpuinfo"
    processor = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
    processor += "model name\t: AMD EPYC\nflags\t\t: fpu avx512f\n\n"
    cpuinfo.write_text(processor.format(0) + processor.format(1))
    assert cpu_name(cpuinfo) == "AMD EPYC (family 26, model 2)"
    assert cpu_name(tmp_path / "missing") == (platform.processor() or platform.machine())


def test_pyramid_time_to_quality_runs_and_reports_every_field(tmp_path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "pyramid.py"), "--device", "cpu"]
    command += ["--size", "48", "--steps", "4", "--min-size", "32", "--coarse-steps", "2"]
    command += ["--out", str(tmp_path / "pyramid.json")]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "pyramid.json").read_text())
    assert result["pyramid_sizes"] == [32, 45, 48] and result["single_seconds"] > 0
    assert math.isfinite(result["target_total"]) and result["pyramid_final_stage_evals"] >= 1
    assert {"pyramid_seconds_to_target", "time_ratio", "pyramid_best_in_single_time"} <= set(result)


def test_convergence_benchmark_reports_json_markdown_and_plots(tmp_path) -> None:
    """Tiny and short: checks the mechanics (fields, goals, plot files), not the figures."""
    from benchmarks import convergence

    out = tmp_path / "conv"
    argv = ["--device", "cpu", "--size", "32", "--evals", "4", "--max-factor", "1", "--precision", "fp32",
            "--pairs", "astronaut_hubble", "--layers", "approach2", "--out-dir", str(out),
            "--only", "lbfgs_armijo", "adam_hook",
            "--variant", "adam_hook", "optim.name=adam", "optim.lr=0.05"]  # fmt: skip
    result = convergence.main(argv)

    on_disk = json.loads((out / "convergence.json").read_text())
    assert on_disk["summary"] == result["summary"]
    problem = on_disk["problems"]["astronaut_hubble/approach2"]
    references = {"tutorial", "torch_strong_wolfe", "scipy_lbfgsb"}
    assert set(problem["runs"]) == references | {"lbfgs_armijo", "adam_hook"}
    assert on_disk["settings"]["variants"]["adam_hook"] == ["optim.name=adam", "optim.lr=0.05"]
    fields = {"best_at_evals", "at_evals", "best_at_time", "rises_over_1pct", "evaluated_rises_over_1pct",
              "rejected", "seconds_to_target", "time_ratio_to_target", "ms_per_eval", "goals"}  # fmt: skip
    for name, row in problem["runs"].items():
        assert fields <= set(row), name
        assert row["evals"] >= 4 and row["best_at_evals"] <= row["first_total"]
        assert set(row["goals"]) == {"no_worse_at_evals", "no_rise_over_1pct", "half_the_time"}
    # the same objective: every run starts from the content image and evaluates it first
    firsts = [row["first_total"] for row in problem["runs"].values()]
    assert max(firsts) <= min(firsts) * (1 + 1e-4)
    assert problem["runs"]["tutorial"]["time_ratio_to_target"] == 1.0
    lbfgsb = problem["runs"]["scipy_lbfgsb"]  # a monotone method: its iterate never rises
    assert lbfgsb["rises_any"] == 0 and lbfgsb["at_evals"] == lbfgsb["best_at_evals"]
    assert (
        0 <= result["summary"]["lbfgs_armijo"]["best_at_evals_no_worse_than_tutorial_at_evals"] <= 1
    )
    plot = out / "astronaut_hubble_approach2.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and problem["plot"] == str(plot)
    table = (out / "convergence.md").read_text()
    assert "| astronaut_hubble/approach2 | adam_hook |" in table


def test_convergence_benchmark_runs_every_problem_from_several_starts(tmp_path) -> None:
    """--starts 2: start 1 is the content image plus noise, the same for the tutorial and every
    variant (their first totals agree with each other, not with start 0's), and the report
    gives each run's spread over the starts."""
    from benchmarks import convergence

    out = tmp_path / "conv"
    argv = ["--device", "cpu", "--size", "32", "--evals", "3", "--max-factor", "1", "--precision", "fp32",
            "--pairs", "astronaut_hubble", "--layers", "approach2", "--out-dir", str(out),
            "--only", "lbfgs_armijo", "--skip-strong-wolfe", "--skip-lbfgsb", "--starts", "2",
            "--start-noise", "0.05"]  # fmt: skip
    result = convergence.main(argv)

    problems = result["problems"]
    assert set(problems) == {"astronaut_hubble/approach2", "astronaut_hubble/approach2@start1"}
    firsts = {
        name: [row["first_total"] for row in entry["runs"].values()]
        for name, entry in problems.items()
    }
    for values in firsts.values():
        assert max(values) <= min(values) * (1 + 1e-4)
    start0 = firsts["astronaut_hubble/approach2"][0]
    start1 = firsts["astronaut_hubble/approach2@start1"][0]
    assert abs(start1 / start0 - 1) > 1e-3
    cell = result["spread"]["astronaut_hubble/approach2"]["lbfgs_armijo"]
    assert len(cell["best_at_evals"]) == 2 and 0 <= cell["no_worse_than_tutorial"] <= 2
    assert (out / "astronaut_hubble_approach2_start1.png").is_file()
    assert "| astronaut_hubble/approach2 | lbfgs_armijo |" in (out / "convergence.md").read_text()
    with pytest.raises(SystemExit):
        convergence.parse_args(["--starts", "0"])


def test_convergence_metrics_count_rises_of_logged_and_evaluated_totals() -> None:
    from benchmarks.convergence import Trace, metrics

    trace = Trace(
        seconds=[1.0, 2.0, 3.0, 4.0, 5.0],
        total=[10.0, 10.0, 9.0, 9.05, 8.0],  # the iterate's: a rejected trial logs the base
        evaluated=[10.0, 12.0, 9.0, 9.05, 8.0],
        accepted=[True, False, True, True, True],
    )
    assert metrics(trace, evals=5, seconds=0.5, target=9.0)["best_at_time"] is None
    row = metrics(trace, evals=5, seconds=3.5, target=9.0)
    assert row["rises_over_1pct"] == 0 and row["rises_any"] == 1  # 9 -> 9.05
    assert row["evaluated_rises_over_1pct"] == 1 and row["rejected"] == 1  # 10 -> 12
    assert row["best_at_time"] == 9.0 and row["best_at_evals"] == 8.0
    assert row["seconds_to_target"] == 3.0 and row["time_ratio_to_target"] == round(3 / 3.5, 3)
    assert row["evals_to_target"] == 3 and row["at_evals"] == 8.0


def test_lbfgsb_reference_logs_its_iterate_respects_the_box_and_stops_at_the_budget() -> None:
    """On a quadratic whose minimiser lies partly outside [0, 1], L-BFGS-B ends at the clamped
    minimiser; its logged total (the iterate) never rises and every evaluation is kept."""
    import torch

    from benchmarks.convergence import Synthesis, run_lbfgsb

    target = torch.linspace(-0.5, 1.5, 12).view(1, 3, 2, 2)
    image = torch.full_like(target, 0.5)

    def objective(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"total": ((x - target) ** 2 * torch.arange(1.0, 13.0).view_as(x)).sum()}

    synthesis = Synthesis(step=lambda: {}, image=image, objective=objective)
    trace = run_lbfgsb(synthesis, evals=30, seconds=0.0, max_evals=30, history_size=5)
    assert len(trace.total) == len(trace.evaluated) == len(trace.accepted) <= 30
    assert all(b <= a for a, b in itertools.pairwise(trace.total))
    for index, total in enumerate(trace.total):  # the last accepted point's total, every time
        last = max(i for i in range(index + 1) if trace.accepted[i])
        assert total == trace.evaluated[last]
    assert trace.accepted[0] and not all(trace.accepted)  # its line search tried some points
    floor = objective(target.clamp(0, 1))["total"].item()
    assert trace.total[-1] == pytest.approx(floor, rel=1e-6, abs=1e-9)
    short = run_lbfgsb(synthesis, evals=3, seconds=0.0, max_evals=30, history_size=5)
    assert len(short.total) == 3
