"""Real offline W&B runs through the CLI, read back with `wandb leet inspect --json`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    leet_inspect,
    only_run_dir,
    only_wandb_run,
    records_of,
    run_cli,
    wandb_records,
    wandb_summary,
)

pytestmark = pytest.mark.slow
STEPS = 10


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> list[Path]:
    """The issue's own command: four offline W&B runs of a 2x2 multirun."""
    cwd = tmp_path_factory.mktemp("wandb_sweep")
    result = run_cli(
        "model.weights=random",
        f"steps={STEPS}",
        "image_size=64",
        "log.image_every=5",
        "style_weight=1e3,1e6",
        "layers=approach1,approach2",
        cwd=cwd,
        multirun=True,
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.parent for p in cwd.glob("multirun/*/*/*/summary.json"))
    assert len(jobs) == 4
    return jobs


def run_record(records: list[dict]) -> dict:
    (run,) = records_of(records, "run")
    return run


def test_each_job_is_its_own_run_in_one_group(sweep: list[Path]) -> None:
    runs = [run_record(wandb_records(job)) for job in sweep]
    assert len({run["run_id"] for run in runs}) == 4
    groups = {run["run_group"] for run in runs}
    assert len(groups) == 1 and next(iter(groups)).startswith("multirun-")
    names = {run["display_name"] for run in runs}  # the swept keys only: short names
    assert "style_weight=1000.0,layers=approach1" in names
    for run in runs:
        assert run["job_type"] == "synthesis"
        assert set(run["tags"]) >= {"astronaut_hubble", "lbfgs"}


def test_config_matches_the_overrides(sweep: list[Path]) -> None:
    seen = set()
    for job in sweep:
        config = run_record(wandb_records(job))["config"]["update"]
        assert config["steps"] == STEPS and config["image_size"] == 64
        assert config["model"]["weights"] == "random"
        assert config["layers"]["name"] in ("approach1", "approach2")
        expected_style = {"approach1": [0, 5, 10, 19, 28], "approach2": [2, 7, 12, 21, 30]}
        assert config["layers"]["style"] == expected_style[config["layers"]["name"]]
        seen.add((config["style_weight"], config["layers"]["name"]))
    assert seen == {(1e3, "approach1"), (1e3, "approach2"), (1e6, "approach1"), (1e6, "approach2")}


def test_one_history_row_per_step_with_every_loss(sweep: list[Path]) -> None:
    for job in sweep:
        rows = [h["item"] for h in records_of(wandb_records(job), "history")]
        loss_rows = [row for row in rows if "loss/total" in row]
        assert [row["step"] for row in loss_rows] == list(range(STEPS))
        # frames ride on their step's row; the final image, GIF and table on one row after them
        assert len(rows) == STEPS + 1 and rows[-1]["step"] == STEPS
        first = loss_rows[0]
        for key in ("loss/content", "loss/style", "loss/tv"):
            assert key in first
        assert any(key.startswith("loss/style/conv") for key in first)
        assert any(key.startswith("loss/content/") for key in first)


def test_images_gif_and_table_are_logged(sweep: list[Path]) -> None:
    job = sweep[0]
    rows = [h["item"] for h in records_of(wandb_records(job), "history")]
    frame_steps = [
        row["step"] for row in rows if "images/synthesis.path" in row or "images/synthesis" in row
    ]
    assert frame_steps == [0, 5]
    (run_dir,) = (job / "wandb").glob("offline-run-*")
    media = run_dir / "files" / "media"
    names = [p.name for p in media.rglob("*") if p.is_file()]
    for prefix in ("content_", "style_", "final_", "synthesis_"):
        assert any(name.startswith(prefix) and name.endswith(".png") for name in names), prefix
    assert any(name.startswith("synthesis_gif") and name.endswith(".gif") for name in names)
    assert any(name.startswith("comparison") and name.endswith(".table.json") for name in names)


def test_the_comparison_table_keeps_numbers_as_numbers(sweep: list[Path]) -> None:
    (table,) = sweep[0].glob("wandb/offline-run-*/files/media/table/comparison*.table.json")
    data = json.loads(table.read_text())
    row = dict(zip(data["columns"], data["data"][0], strict=True))
    assert row["style_weight"] == 1000.0 and row["steps"] == STEPS
    assert row["log.image_every"] == 5 and row["layers"] == "approach1"


def test_summary_and_exit_code(sweep: list[Path]) -> None:
    report = wandb_summary(sweep[0])
    assert report["exit_code"] == 0 and report["state"] == "finished"
    summary = report["summary"]
    for key in (
        "final/total",
        "final/style",
        "seconds",
        "evaluations_per_second",
        "peak_memory_mib",
    ):
        assert isinstance(summary[key], float), key
    assert summary["weights"] == "random" and summary["device"] == "cpu"
    assert summary["loss/total"]["min"] <= summary["final/total"]


def test_images_are_uint8_not_black(sweep: list[Path]) -> None:
    (run_dir,) = (sweep[0] / "wandb").glob("offline-run-*")
    final = next((run_dir / "files" / "media").rglob("final_*.png"))
    assert np.asarray(Image.open(final)).mean() > 20


def test_a_failing_job_finishes_its_run_with_a_nonzero_exit_code(tmp_path: Path) -> None:
    result = run_cli(
        "model.weights=random",
        "image_size=32",
        "steps=2",
        f"pair.content={tmp_path / 'missing.jpg'}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "image not found" in result.stderr
    report = wandb_summary(only_run_dir(tmp_path))
    assert report["exit_code"] == 1 and report["state"] == "failed"


@pytest.mark.parametrize("flags", [("--json",), ("--summary", "--json")])
def test_the_in_process_reader_prints_what_the_wandb_command_prints(sweep, flags) -> None:
    """conftest's `leet_inspect` (W&B's command called in-process, as every W&B test reads runs)
    gives what `wandb leet inspect` gives in the shell, byte for byte."""
    run = only_wandb_run(sweep[0])
    wandb_cli = Path(sys.executable).parent / "wandb"
    command = [str(wandb_cli), "leet", "inspect", *flags, str(run)]
    shell = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    assert shell.stdout.strip() and leet_inspect(run, *flags) == shell.stdout
