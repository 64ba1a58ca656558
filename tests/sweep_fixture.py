"""One tiny real multirun (2x2: style_weight x layers) shared by the report and notebook tests.

Each test module that needs it defines a session fixture calling `tiny_sweep`; the multirun runs
once per test run however many modules (and pytest-xdist workers) ask for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli, shared_folder

OVERRIDES = (
    "model.weights=random",
    "steps=3",
    "image_size=32",
    "logger=none",
    "style_weight=1e3,1e6",
    "layers=approach1,approach2",
)


def _run_sweep(cwd: Path) -> None:
    result = run_cli(
        *OVERRIDES, "hydra.sweep.dir=multirun/tiny", cwd=cwd, multirun=True, timeout=180
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The multirun folder of a 4-job sweep (made on first use)."""
    return shared_folder(tmp_path_factory, "tiny_sweep", _run_sweep) / "multirun" / "tiny"
