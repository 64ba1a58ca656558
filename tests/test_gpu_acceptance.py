"""benchmarks/gpu_run.sh, checked here so that a broken script is caught before a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks import gpu_acceptance
from tests.conftest import ROOT, cli_env

PHASES = ("packages", "cuda_tests", "floor", "features", "sweep", "pyramid")


def test_the_script_runs_every_phase_dry_on_cpu(tmp_path) -> None:
    env = cli_env({"OUT": str(tmp_path), "PYTHON": sys.executable})
    done = subprocess.run(
        ["bash", "benchmarks/gpu_run.sh", "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert result["dry_run"] and all(result[phase]["ok"] for phase in PHASES), result
    runs = result["features"]["runs"]
    assert set(runs) == {*gpu_acceptance.DRY_FEATURES, "pyramid"}
    assert {(row["step_path"], row["reason"]) for row in runs.values()} == {("eager", "cpu")}
    assert result["sweep"]["batched_step_paths"] == ["eager (cpu)"]
    assert "test_the_captured_step_reads_nothing_back" in (tmp_path / "pytest.log").read_text()
    section = (tmp_path / "RESULTS-section.md").read_text()
    assert "| features | yes |" in section and "| pyramid | eager (cpu) | None |" in section


def test_a_run_off_the_expected_path_fails_loudly(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(gpu_acceptance, "FEATURES", {"gram": []})
    monkeypatch.setattr(gpu_acceptance, "DRY_FEATURES", ("gram",))
    monkeypatch.setattr(gpu_acceptance, "expected_path", lambda device: ("cuda_graph", None))
    skip = "cuda_tests,floor,sweep,pyramid"
    assert gpu_acceptance.main(["--dry-run", "--out", str(tmp_path), "--skip", skip]) == 1
    assert "FAILED: features" in capsys.readouterr().out
    result = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert not result["features"]["runs"]["gram"]["ok"]
    assert "| features | **no** |" in (tmp_path / "RESULTS-section.md").read_text()


def test_missing_packages_are_named_with_how_to_carry_them(tmp_path, monkeypatch, capsys) -> None:
    packages = {**gpu_acceptance.PACKAGES, "no_such_module_here": "no-such-package"}
    monkeypatch.setattr(gpu_acceptance, "PACKAGES", packages)
    assert gpu_acceptance.main(["--dry-run", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "missing Python packages: no-such-package" in error and "gpu-wheels" in error
