"""The benchmark runs end to end on the CPU in CI size and reports every field (not its speed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

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
    assert result["env"]["device"] == "cpu"


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
