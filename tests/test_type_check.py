"""The type check `make lint` runs (mypy, [tool.mypy] in pyproject.toml): wired into `make lint`
and pre-commit, and enforcing the engine's interfaces rather than describing them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_make_lint_runs_mypy_over_both_packages() -> None:
    commands = subprocess.run(
        ["make", "-n", "lint", "BIN=venv-bin"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "venv-bin/mypy" in commands  # no arguments: the files of [tool.mypy]


def test_pre_commit_runs_ruff_and_mypy_from_the_projects_venv() -> None:
    (repo,) = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"]
    hooks = {hook["id"]: hook for hook in repo["hooks"]}
    assert repo["repo"] == "local"
    assert set(hooks) == {"ruff-check", "ruff-format", "mypy"}
    assert all(hook["language"] == "system" for hook in hooks.values())  # offline
    assert all(hook["entry"].startswith(".venv/bin/") for hook in hooks.values())
    assert hooks["mypy"]["pass_filenames"] is False  # the whole package, as make lint checks it


def test_mypy_holds_style_statistics_to_their_protocol(tmp_path: Path) -> None:
    """Both registered statistics are a StyleStatistic; one without `loss` is refused."""
    snippet = tmp_path / "statistics_check.py"
    snippet.write_text(
        textwrap.dedent(
            """
            import torch
            from stylelab.engine.statistics import STYLE_STATISTICS, GramStatistic, StyleStatistic
            from stylelab.engine.statistics import W2Statistic

            class NoLoss:
                name = "no-loss"

                def measure(self, features: torch.Tensor, mask: torch.Tensor | None = None):
                    return features

                def blend(self, targets: list, weights: list[float]) -> object:
                    return targets[0]

            fitting: list[StyleStatistic] = [GramStatistic(), W2Statistic(), STYLE_STATISTICS["w2"]()]
            refused: StyleStatistic = NoLoss()
            """
        )
    )
    found = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache"), str(snippet)],
        cwd=ROOT,  # [tool.mypy] of pyproject.toml, and the cache make lint fills
        capture_output=True,
        text=True,
    )
    errors = [line for line in found.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, found.stdout
    refused = snippet.read_text().splitlines().index("refused: StyleStatistic = NoLoss()") + 1
    assert f"statistics_check.py:{refused}:" in errors[0] and '"StyleStatistic"' in errors[0]
    notes = [
        line.split(": note:")[1].strip() for line in found.stdout.splitlines() if ": note:" in line
    ]
    assert "loss" in notes  # the missing member, named
