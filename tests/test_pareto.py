"""Pareto sweeps: `sweep_returns`, the Pareto set, and `hparams_search=pareto` end to end."""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from stylelab.pareto import failed_return, pareto_optimal, sweep_return
from stylelab.report import write_report
from tests.conftest import cli_env, run_cli, run_python

PARETO_RUN = ["hparams_search=pareto", "model.weights=random", "image_size=32", "steps=2"]


def test_pareto_optimal_keeps_the_undominated_finite_points() -> None:
    points = [(1, 5), (2, 2), (3, 3), (5, 1), (1, 5), (0, math.inf), (math.nan, 0)]
    assert pareto_optimal(points) == [0, 1, 3, 4]


def test_sweep_return_is_a_float_for_one_key_and_a_list_for_several() -> None:
    summary = {"final/total": 2.5, "eval/content": 0.1, "eval/style": float("nan")}
    assert sweep_return(summary, "final/total") == 2.5
    assert sweep_return(summary, ["eval/content", "eval/style", "eval/ssim"]) == [
        0.1,
        math.inf,  # NaN and missing rank last (Optuna fails the sweep on a NaN)
        math.inf,
    ]
    assert failed_return("final/total") == math.inf
    assert failed_return(["eval/content", "eval/style"]) == [math.inf, math.inf]


def test_a_bad_sweep_returns_is_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "model.weights=random", "image_size=32", "steps=1", "logger=none", "sweep_returns=[]",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        "sweep_returns=[]: give a summary key such as final/total" in result.stdout + result.stderr
    )


# Runs stylelab.run with an evaluation that failed: each finished run's summary loses its eval/*
# distances and says why, as the runner records a failed evaluation.
FAILED_EVALUATION_RUN = """
    import sys

    import stylelab.run as run
    from stylelab.outputs import RunFolder

    synthesis_steps = run.synthesis_steps

    def failed_evaluation(config, run_dir, tracker, info, *args, **kwargs):
        summary = yield from synthesis_steps(config, run_dir, tracker, info, *args, **kwargs)
        for key in ("eval/content", "eval/style"):
            summary.pop(key)
        summary["eval/error"] = "final.png: cannot identify image file"
        RunFolder(run_dir).write_summary(summary)
        return summary

    run.synthesis_steps = failed_evaluation
    run.main()
"""


def run_failed_evaluation(*overrides: str, cwd: Path) -> tuple[int, str]:
    """`python -c FAILED_EVALUATION_RUN overrides...` in `cwd` (forked: tests/cli_fork.py)."""
    code = textwrap.dedent(FAILED_EVALUATION_RUN)
    result = run_python(["-c", code, *overrides], cwd, cli_env(), timeout=300)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.slow
def test_a_pareto_sweep_returns_both_metrics_and_names_the_pareto_trials(tmp_path: Path) -> None:
    result = run_cli(
        *PARETO_RUN, "logger=none", "hydra.sweeper.n_trials=3", "hydra.sweep.dir=multirun/p",
        cwd=tmp_path,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    sweep = tmp_path / "multirun" / "p"
    summaries = {
        job.name: json.loads((job / "summary.json").read_text())
        for job in sorted(sweep.glob("*/summary.json"))
        for job in [job.parent]
    }
    assert len(summaries) == 3
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    told = sorted(tuple(s["values"]) for s in results["solutions"])
    points = {name: (s["eval/content"], s["eval/style"]) for name, s in summaries.items()}
    front = [list(points)[i] for i in pareto_optimal(list(points.values()))]
    assert told == sorted(points[name] for name in front)  # Optuna got each run's pair
    line = next(line for line in log.splitlines() if "Pareto-optimal trials" in line)
    assert "minimizing eval/content, minimizing eval/style" in line
    assert [f"job {name} " in line for name in summaries] == [name in front for name in summaries]
    page = write_report(sweep).read_text()  # the report rings and lists the same trials
    table = page[page.index("Pareto-optimal runs</h3>") :]
    assert sorted(re.findall(r"<tr><td>(\d+)</td>", table[: table.index("</table>")])) == front


@pytest.mark.slow
def test_a_pareto_sweep_whose_evaluation_failed_ranks_every_trial_last(tmp_path: Path) -> None:
    code, log = run_failed_evaluation(
        *PARETO_RUN, "logger=none", "hydra.sweeper.n_trials=2", cwd=tmp_path
    )
    assert code == 0, log[-3000:]
    (results_file,) = tmp_path.glob("multirun/*/*/optimization_results.yaml")
    values = [s["values"] for s in yaml.safe_load(results_file.read_text())["solutions"]]
    assert values and all(v == [math.inf, math.inf] for v in values)
    assert "none, no finished job recorded all of eval/content, eval/style" in log


@pytest.mark.parametrize(
    ("returns", "expected"),
    [("final/total", math.inf), (["eval/content", "eval/style"], [math.inf, math.inf])],
)
def test_a_dead_cluster_job_returns_inf_for_each_objective(
    returns: object, expected: object, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from hydra_plugins.stylelab_launchers.submitit_launchers import WaitForEveryJob

    config = OmegaConf.create({"sweep_returns": returns, "hydra": {"job": {"name": "run"}}})
    launcher = WaitForEveryJob.__new__(WaitForEveryJob)
    launcher.config, launcher._EXECUTOR = config, "local"
    launcher.job_dir = lambda overrides, num, job_id: tmp_path / "0"  # type: ignore[method-assign]
    job = SimpleNamespace(job_id="42", state="FAILED", paths=SimpleNamespace(stderr="x.err"))
    result = WaitForEveryJob.dead_job(launcher, job, ["a=1"], 0, RuntimeError("killed"))
    assert result.return_value == expected
