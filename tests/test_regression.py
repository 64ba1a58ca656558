"""Runs recorded before the engine was opened up (issue 11) must reproduce their losses.

The fixtures are the `losses.jsonl` of CPU fp32 runs at 48 px, 15 steps, seed 3, random weights,
recorded from main before the refactor; the same command today must give the same rows to 1e-6
relative. The L-BFGS ones were re-recorded when its default became the Armijo line search
(issue 15). Re-record deliberately, saying why in the commit message:

    python -m tests.test_regression lbfgs       # or: adam, or both
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).parent / "fixtures" / "regression"
RECORDED = ["model.weights=random", "image_size=48", "steps=15", "seed=3", "device=cpu"]
RECORDED += ["precision=fp32", "logger=none"]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("layers", ["approach1", "approach2"])
@pytest.mark.parametrize("optim", ["lbfgs", "adam"])
def test_recorded_runs_reproduce_their_losses(tmp_path: Path, layers: str, optim: str) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        *RECORDED, f"layers={layers}", f"optim={optim}", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    expected = read_rows(FIXTURES / f"{layers}-{optim}.jsonl")
    actual = read_rows(run_dir / "losses.jsonl")
    assert [row["step"] for row in actual] == [row["step"] for row in expected]
    for got, want in zip(actual, expected, strict=True):
        missing = set(want) - set(got)
        assert not missing, f"step {want['step']}: keys {missing} no longer logged"
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (want["step"], key)


def record(optims: list[str]) -> None:
    """Run the recorded commands for `optims` and overwrite their fixtures."""
    for optim in optims:
        for layers in ("approach1", "approach2"):
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = Path(tmp) / "run"
                result = run_cli(
                    *RECORDED, f"layers={layers}", f"optim={optim}",
                    f"hydra.run.dir={run_dir}", cwd=Path(tmp),
                )  # fmt: skip
                if result.returncode != 0:
                    raise SystemExit(result.stderr)
                shutil.copy(run_dir / "losses.jsonl", FIXTURES / f"{layers}-{optim}.jsonl")
            print(f"recorded {layers}-{optim}.jsonl")


if __name__ == "__main__":
    record(sys.argv[1:] or ["lbfgs", "adam"])
