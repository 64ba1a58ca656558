"""End to end through the command line, in subprocesses, offline, with random weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAST, only_run_dir, run_cli

pytestmark = pytest.mark.slow


def test_single_run_writes_every_output_and_the_loss_falls(tmp_path: Path) -> None:
    # Adam: L-BFGS without line search (as the tutorial runs it) may oscillate for a while on
    # random weights before it settles; its descent is tested in test_synthesis.py.
    result = run_cli(
        "model.weights=random",
        "image_size=64",
        "steps=20",
        "log.image_every=5",
        "optim=adam",
        "optim.lr=0.05",
        "logger=none",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path)
    assert f"outputs in {run_dir}" in result.stderr + result.stdout
    for name in (
        "final.png",
        "content.png",
        "style.png",
        "synthesis.gif",
        "losses.jsonl",
        "config.yaml",
        "summary.json",
        "run.log",
    ):
        assert (run_dir / name).is_file(), name
    frames = sorted(p.name for p in (run_dir / "frames").glob("*.png"))
    assert frames == [f"step_{s:06d}.png" for s in (0, 5, 10, 15)]
    rows = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(20))
    assert {"total", "content", "style", "tv", "style/conv1_2", "content/relu4_2"} <= set(rows[0])
    best = min(row["total"] for row in rows)  # keep=best (the default): the result's losses
    assert best < rows[0]["total"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["weights"] == "random"
    assert summary["steps"] == 20 and summary["evaluations_per_second"] > 0
    assert summary["device"] == "cpu" and summary["final/total"] == pytest.approx(best)
    with Image.open(run_dir / "synthesis.gif") as gif:
        assert gif.n_frames == 5  # four frames and the final image
    assert np.asarray(Image.open(run_dir / "final.png")).shape == (64, 64, 3)
    assert "RANDOM VGG-19 WEIGHTS" in (run_dir / "run.log").read_text()
    assert not (run_dir / "wandb").exists()  # logger=none leaves no W&B folder


def test_multirun_two_by_two_gives_four_job_folders(tmp_path: Path) -> None:
    result = run_cli(
        *FAST,
        "steps=3",
        "style_weight=1e3,1e6",
        "layers=approach1,approach2",
        cwd=tmp_path,
        multirun=True,
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.parent for p in tmp_path.glob("multirun/*/*/*/summary.json"))
    assert len(jobs) == 4
    combos = set()
    for job in jobs:
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        combos.add((("1000.0" in overrides), ("approach1" in overrides)))
        assert json.loads((job / "summary.json").read_text())["status"] == "finished"
    assert len(combos) == 4
    assert "4 of 4 jobs succeeded" in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steps=abc", "could not be converted to Integer"),
        ("nonsense_key=1", "Key 'nonsense_key' not in 'Config'"),
        ("layers=approach9", "Could not find 'layers/approach9'"),
        ("optim=sgd", "Could not find 'optim/sgd'"),
    ],
)
def test_config_errors_fail_with_hydras_message(
    tmp_path: Path, override: str, message: str
) -> None:
    result = run_cli(*FAST, override, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_pair_without_its_content_photo_names_the_override(tmp_path: Path) -> None:
    result = run_cli(*FAST, "pair=berkeley_starry", cwd=tmp_path)
    assert result.returncode == 1
    assert "pair.content is not set" in result.stderr
    assert "pair.content=" in result.stderr
    assert "Traceback" not in result.stderr
