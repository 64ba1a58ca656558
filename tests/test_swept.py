"""A multirun's swept keys name its W&B runs; override values keep their types for the table."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from stylelab.run import run_name, swept_values
from stylelab.swept import multirun_sweep_keys, sweep_keys, typed_value
from tests.test_perceptual import config

FIXED = ["model.weights=random", "image_size=32", "logger=none", "hydra.sweep.dir=d"]


def test_sweep_keys_are_the_sweep_overrides_and_the_sweepers_params(tmp_path: Path) -> None:
    task = [*FIXED, "style_weight=1e3,1e6", "+seed=range(0,3)", "optim.lr=0.5"]
    assert sweep_keys(task, {"init": "choice(content,noise)"}) == ["init", "style_weight", "seed"]
    OmegaConf.save(
        OmegaConf.create({"hydra": {"overrides": {"task": task}}}), tmp_path / "multirun.yaml"
    )
    assert multirun_sweep_keys(tmp_path, None) == ["style_weight", "seed"]
    assert multirun_sweep_keys(tmp_path / "missing", None) == []


def save_multirun(sweep_dir: Path, task: list[str]) -> None:
    OmegaConf.save(
        OmegaConf.create({"hydra": {"overrides": {"task": task}}}), sweep_dir / "multirun.yaml"
    )


def test_a_sweeps_keys_are_parsed_once_until_its_multirun_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every job of a sweep asks for its keys: its multirun.yaml is read and its overrides
    parsed once per process, then again after a re-run (an extension) rewrites the file."""
    parsed: list[str] = []
    parse = OverridesParser.parse_override
    monkeypatch.setattr(
        OverridesParser,
        "parse_override",
        lambda self, line: parsed.append(line) or parse(self, line),
    )
    loads: list[object] = []
    load = OmegaConf.load
    monkeypatch.setattr(OmegaConf, "load", lambda file: loads.append(file) or load(file))
    save_multirun(tmp_path, [*FIXED, "seed=1,2"])
    for _ in range(3):  # three jobs
        keys = multirun_sweep_keys(tmp_path, None)
        assert keys == ["seed"]
        keys.append("a caller's change")  # each job gets its own list
    assert len(loads) == 1 and parsed == [*FIXED, "seed=1,2"]
    save_multirun(tmp_path, [*FIXED, "init=a,b"])  # same size as before
    assert multirun_sweep_keys(tmp_path, None) == ["init"]
    assert multirun_sweep_keys(tmp_path, {"style_weight": "interval(1,2)"}) == [
        "style_weight",
        "init",
    ]
    assert len(loads) == 3 and len(parsed) == 3 * len(FIXED) + 3
    assert multirun_sweep_keys(str(tmp_path), None) == ["init"] and len(loads) == 3


def test_a_multirun_names_its_runs_by_their_swept_keys_only() -> None:
    job = [*FIXED, "style_weight=1000.0", "layers=approach1", "optim.lr=0.5"]
    assert run_name(job, ["style_weight", "layers"]) == "style_weight=1000.0,layers=approach1"
    assert (
        run_name(job)
        == "model.weights=random,image_size=32,style_weight=1000.0,layers=approach1,optim.lr=0.5"
    )
    assert run_name(job, ["seed"]) == run_name(job)  # none of its keys swept: every override


def test_the_comparison_table_keeps_numbers_and_booleans() -> None:
    overrides = ["optim.lr=0.5", "optim.history_size=25", "batch_invariant=true", "init=noise"]
    values = swept_values(config(*overrides), overrides)
    assert values["optim.lr"] == 0.5 and values["optim.history_size"] == 25
    assert values["batch_invariant"] is True and values["init"] == "noise"
    assert typed_value("1e6") == 1e6 and typed_value("null") is None
    assert typed_value("skimage\\:coffee") == "skimage:coffee"
