"""Sweeps: W&B sweep files as `wandb agent` would run them, the Optuna preset, submitit_local."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from tests.conftest import FAST, records_of, run_cli, wandb_records, wandb_summary

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SWEEP_FILES = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))
TINY = ["model.weights=random", "image_size=32", "steps=2"]


def sample(parameter: dict, rng: random.Random):
    """One value of a W&B sweep parameter, as the sweep controller would pick it."""
    if "values" in parameter:
        return rng.choice(parameter["values"])
    if "value" in parameter:
        return parameter["value"]
    low, high = parameter["min"], parameter["max"]
    return rng.uniform(low, high) if isinstance(low, float) else rng.randint(low, high)


def agent_command(sweep: dict, params: dict) -> list[str]:
    """The command `wandb agent` runs for `params` (wandb_agent.Agent._command_run's expansion)."""
    variables = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    variables.update(
        interpreter=[sys.executable], env=["/usr/bin/env"], program=[sweep.get("program", "")]
    )
    command: list[str] = []
    for chunk in create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            command += variables.get(chunk[2:-1]) or []
        else:
            command.append(chunk)
    return command


def test_there_is_a_style_weight_by_layers_sweep() -> None:
    sweep = yaml.safe_load((ROOT / "experiments/sweeps/style_weight_x_layers.yaml").read_text())
    assert set(sweep["parameters"]) == {"style_weight", "layers"}
    assert sweep["method"] == "grid" and "${args_no_hyphens}" in sweep["command"]


@pytest.mark.parametrize("sweep_file", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_sweep_file_command_runs_for_a_sampled_parameter_set(
    sweep_file: Path, tmp_path: Path
) -> None:
    sweep = yaml.safe_load(sweep_file.read_text())
    params = {name: sample(spec, random.Random(0)) for name, spec in sweep["parameters"].items()}
    command = agent_command(sweep, params)
    assert command[:4] == ["/usr/bin/env", sys.executable, "-m", "stylelab.run"]
    # The sweep's own command, plus overrides that make it tiny and offline.
    result = run_cli(*command[4:], *TINY, cwd=tmp_path, env={"WANDB_SWEEP_ID": "abc123"})
    assert result.returncode == 0, result.stderr
    (job,) = [p.parent for p in tmp_path.glob("outputs/*/*/summary.json")]
    (run,) = records_of(wandb_records(job), "run")
    assert run["run_group"] == "sweep-abc123"
    config = run["config"]["update"]
    for name, value in params.items():
        node = config
        for part in name.split("."):
            node = node[part]
        node = node["name"] if isinstance(node, dict) else node
        assert str(node) == str(value) or float(node) == pytest.approx(float(value)), name


def test_optuna_preset_runs_trials_and_reports_the_best(tmp_path: Path) -> None:
    result = run_cli(
        "hparams_search=optuna", "hydra.sweeper.n_trials=2", *FAST, "steps=2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (results_file,) = tmp_path.glob("multirun/*/*/optimization_results.yaml")
    best = yaml.safe_load(results_file.read_text())
    assert best["name"] == "optuna" and best["best_value"] > 0
    assert set(best["best_params"]) == {"optim.lr", "optim.history_size", "init"}
    assert len(list(tmp_path.glob("multirun/*/*/*/summary.json"))) == 2


def test_submitit_local_multirun_two_jobs_one_group(tmp_path: Path) -> None:
    result = run_cli(
        "hydra/launcher=local", *TINY, "style_weight=1e3,1e6", cwd=tmp_path, multirun=True
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.parent for p in tmp_path.glob("multirun/*/*/*/summary.json"))
    assert len(jobs) == 2
    groups = {records_of(wandb_records(job), "run")[0]["run_group"] for job in jobs}
    assert len(groups) == 1
    assert all(wandb_summary(job)["exit_code"] == 0 for job in jobs)
