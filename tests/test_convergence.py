"""Convergence controls: the best iterate kept, TV l1/l2, stopping once converged."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylelab.engine.losses import TVLoss
from stylelab.engine.observers import ConvergenceStop
from tests.conftest import run_cli
from tests.test_open_engine import Rows, pyramid

pytestmark = pytest.mark.slow


def test_tv_l2_is_the_mean_squared_difference_of_neighbours() -> None:
    image = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    # x: (1, 0) -> squares 1 and 0 -> mean 0.5; y: (0.5, -0.5) -> 0.25 each -> 0.25
    assert TVLoss("l2")(image).item() == pytest.approx(0.5 * (0.5 + 0.25))
    assert TVLoss("l1")(image).item() == pytest.approx(0.5 * (0.5 + 0.5))
    with pytest.raises(ValueError, match="tv_loss 'l3'"):
        TVLoss("l3")


def test_convergence_stop_ends_the_last_stage_only() -> None:
    synthesis = pyramid("adam")
    observer = Rows()
    result = synthesis.run([observer, ConvergenceStop(tolerance=10.0, window=1)])
    steps = [row["step"] for row in observer.rows]
    assert result.status == "finished" and result.stopped_early.startswith("converged")
    assert steps[:4] == [0, 1, 2, 3]  # the first stage ran in full
    assert steps == list(range(len(steps))) and len(steps) < 8


def run_dir_of(tmp_path: Path, *overrides: str) -> Path:
    run_dir = tmp_path / "run"
    result = run_cli(
        "model.weights=random", "logger=none", "image_size=32", f"hydra.run.dir={run_dir}",
        *overrides, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run_dir


def test_keep_best_returns_the_lowest_total_iterate(tmp_path: Path) -> None:
    # Fixed-step L-BFGS on random weights oscillates: the last iterate is not the best.
    run_dir = run_dir_of(tmp_path, "steps=12", "keep=best", "optim.line_search=none",
                         "log.image_every=1")  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda row: row["total"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_step"] == best["step"] and summary["kept"] == "best"
    assert summary["final/total"] == pytest.approx(best["total"])
    frame = np.asarray(Image.open(run_dir / "frames" / f"step_{best['step']:06d}.png"))
    assert np.array_equal(np.asarray(Image.open(run_dir / "final.png")), frame)


def test_tolerance_ends_the_run_and_says_so(tmp_path: Path) -> None:
    run_dir = run_dir_of(tmp_path, "steps=200", "optim.tolerance=0.5", "optim.window=5",
                         "log.flush_every=5")  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] < 200
    assert "converged" in summary["stopped_early"]
    assert "stopped early at step" in (run_dir / "run.log").read_text()


def test_line_search_logs_its_iterate_and_every_trial(tmp_path: Path) -> None:
    # The regression fixture's run: one trial (step 13) is rejected by the Armijo search.
    run_dir = run_dir_of(tmp_path, "image_size=48", "steps=15", "seed=3", "layers=approach2",
                         "log.image_every=1")  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    totals = [row["total"] for row in rows]
    assert all(b <= a for a, b in itertools.pairwise(totals))  # never rises
    rejected = [row["step"] for row in rows if row["trial/total"] > row["total"]]
    assert rejected, "no trial was rejected: the test no longer covers the line search"
    step = rejected[0]
    assert rows[step]["total"] == rows[step - 1]["total"]  # the iterate stayed where it was
    frame = [
        np.asarray(Image.open(run_dir / "frames" / f"step_{s:06d}.png")) for s in (step, step + 1)
    ]
    assert np.array_equal(*frame)  # frames show the iterate, not the rejected trial
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["final/total"] == pytest.approx(min(totals)) and "final/trial/total" not in summary
    )


def test_resume_just_before_a_rejected_trial_logs_the_same_iterate() -> None:
    """The iterate's terms travel in the checkpoint: a run resumed right before a rejected
    trial logs the same rows as the run that went straight through."""
    from stylelab.factory import build_synthesis
    from tests.test_open_engine import tiny_config

    def synthesis():
        cfg = tiny_config(image_size=40, steps=20, seed=3)
        cfg.log.flush_every, cfg.optim.lr = 1, 4.0  # first trials of 4: some are rejected
        return build_synthesis(cfg).synthesis

    straight = Rows()
    synthesis().run([straight])
    rejected = [row["step"] for row in straight.rows if row["trial/total"] > row["total"]]
    assert rejected, "no trial was rejected: the test no longer covers the line search"
    first = Rows()  # asked after each step, before that step's row is flushed:
    stopped = synthesis().run([first], should_stop=lambda: len(first.rows) >= rejected[0] - 1)
    assert stopped.step == rejected[0]  # the rejected trial is the first step resumed
    rest = Rows()
    synthesis().run([rest], resume=first.states[-1])
    assert [row["step"] for row in first.rows + rest.rows] == list(range(20))
    for got, want in zip(first.rows + rest.rows, straight.rows, strict=True):
        assert got == pytest.approx(want, rel=1e-6)
