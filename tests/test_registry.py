"""Registries as the extension points: a term kind and an optimiser from a module outside
stylelab (tests/plugins), each one file + one yaml, run through the CLI; their options checked
where they live and reported as one line naming the config key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stylelab.components import optimizer_of, terms_of
from stylelab.config import Config, LayersConfig, OptimConfig, PairConfig, validate
from stylelab.engine.objective import encoder_layers
from stylelab.engine.optimizers import OPTIMIZERS, Placement
from stylelab.engine.synthesis import Synthesizer
from stylelab.engine.terms import TERM_KINDS
from stylelab.errors import StyleLabError
from stylelab.resources import memory_estimate_gib
from tests.conftest import FAST, run_cli

PLUGINS = Path(__file__).parent / "plugins"
EDGE = {"module": "extra_terms", "kind": "channel_mean", "layers": ["relu5_3"], "weight": 10.0}


@pytest.fixture(autouse=True)
def _plugins_importable(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))


def config(**changes: object) -> Config:
    layers = LayersConfig(name="x", style=[0, 5], content=[21])
    cfg = Config(pair=PairConfig(name="p", content="c", style="s"), layers=layers)
    cfg.logger.name = "none"
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def test_a_term_kind_from_a_module_is_built_and_its_layers_reach_the_encoder() -> None:
    terms = terms_of(config(terms={"edge": EDGE}))
    assert "channel_mean" in TERM_KINDS
    assert [t.name for t in terms][-1] == "channel_mean/relu5_3"
    assert encoder_layers(terms) == [0, 5, 21, 33]  # 33 (relu5_3) from the new term only


def test_the_historic_keys_map_onto_the_built_in_kinds() -> None:
    cfg = config(content_weight=2.0, style_weight=3.0, tv_weight=4.0, tv_loss="l2")
    cfg.layers.style_weights = [1.0, 0.5]
    terms = terms_of(cfg)
    assert [(t.name, t.weight) for t in terms] == [
        ("content/conv4_2", 2.0), ("style/conv1_1", 3.0), ("style/conv2_1", 1.5), ("tv", 4.0)
    ]  # fmt: skip
    assert terms[-1].loss.kind == "l2"


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"terms": {"edge": {**EDGE, "power": -1}}}, "terms.edge.power=-1: must be > 0"),
        ({"terms": {"edge": {**EDGE, "sharpness": 1}}}, "terms.edge.sharpness: term kind"),
        ({"terms": {"edge": {"kind": "nope"}}}, "terms.edge.kind=nope: unknown term kind"),
        ({"terms": {"edge": {**EDGE, "module": "no_such_mod"}}}, "terms.edge.module=no_such_mod"),
        ({"terms": {"edge": {**EDGE, "weight": -2.0}}}, "terms.edge.weight=-2.0: must be >= 0"),
        ({"tv_loss": "l3"}, "tv_loss=l3: unknown tv_loss 'l3': use l1 or l2"),
        ({"style_loss": "gramm"}, "style_loss=gramm: unknown style statistic 'gramm'"),
        ({"keep": "first"}, "keep=first: use one of last, best"),
        ({"optim": OptimConfig(ema=1.5)}, r"optim.ema=1.5: use 0 \(off\)"),
        ({"optim": OptimConfig(name="sgd")}, "optim.name=sgd: unknown optimizer 'sgd'"),
        ({"optim": OptimConfig(history_size=0)}, "optim.history_size=0: must be >= 1"),
        ({"optim": OptimConfig(name="adam", lr=-1)}, "optim.lr=-1: must be > 0"),
        (
            {"optim": OptimConfig(name="sign_sgd", module="extra_optim", options={"momentum": 1})},
            r"optim.options.momentum=1: use a value in \[0, 1\)",
        ),
        (
            {"optim": OptimConfig(name="sign_sgd", module="extra_optim", options={"beta": 1})},
            "optim.options.beta: optim=sign_sgd has no option beta",
        ),
    ],
    ids=lambda value: str(value)[:30],
)
def test_component_errors_are_one_line_naming_the_config_key(changes: dict, line: str) -> None:
    with pytest.raises(StyleLabError, match=line) as info:
        validate(config(**changes))
    assert "\n" not in str(info.value)


def test_an_optimiser_from_a_module_runs_checkpoints_and_carries_over(tmp_path: Path) -> None:
    optim = OptimConfig(name="sign_sgd", module="extra_optim", lr=0.5, options={"momentum": 0.5})
    maker = optimizer_of(optim)
    assert "sign_sgd" in OPTIMIZERS and maker.options.momentum == 0.5
    small = torch.zeros(1, 3, 4, 4, requires_grad=False)
    first = maker(small, Placement())
    first.step(torch.ones_like(small))
    assert torch.equal(small, torch.full_like(small, -0.5))  # one step of lr against the sign
    second = maker(torch.zeros(1, 3, 8, 8), Placement())
    second.carry_from(first)
    assert torch.allclose(second.velocity, torch.ones(1, 3, 8, 8))
    fresh = maker(torch.zeros(1, 3, 8, 8), Placement())
    fresh.load_state_dict(second.state_dict())
    assert torch.equal(fresh.velocity, second.velocity)
    # its memory estimate is its own (4 image copies), not Adam's (3)
    assert memory_estimate_gib(100, 100, maker) > memory_estimate_gib(100, 100, "adam")


def test_the_synthesizer_takes_a_constructor() -> None:
    class Objective(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
            total = (image - 0.25).square().sum()
            return {"total": total}

    maker = optimizer_of(OptimConfig(name="sign_sgd", module="extra_optim", lr=0.05))
    synth = Synthesizer(Objective(), torch.full((1, 3, 4, 4), 0.5), maker)  # type: ignore[arg-type]
    for _ in range(3):
        synth.step()
    assert type(synth.optimizer).__name__ == "SignSGD" and not synth.searching
    assert torch.allclose(synth.image, torch.full((1, 3, 4, 4), 0.35))


def test_the_config_schema_imports_no_tracker() -> None:
    code = "import sys, stylelab.config; print([m for m in sys.modules if 'tracking' in m])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_term_and_an_optimiser_from_outside_stylelab_run_through_the_cli(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    path = os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    result = run_cli(
        "--config-dir", str(PLUGINS / "conf"), *FAST, "steps=3", "+terms=channel_mean",
        "optim=sign_sgd", f"hydra.run.dir={run_dir}", cwd=tmp_path, env={"PYTHONPATH": path},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {"channel_mean/relu5_3", "channel_mean"} <= set(rows[-1])
    assert rows[-1]["channel_mean"] > 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert "name: sign_sgd" in (run_dir / "config.yaml").read_text()


def test_a_launcher_from_outside_stylelab_runs_a_sweep_through_the_cli(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    path = os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    result = run_cli(
        "--config-dir", str(PLUGINS / "conf"), *FAST, "steps=2", "seed=0,1",
        "hydra/launcher=timed", f"hydra.sweep.dir={sweep_dir}", multirun=True, cwd=tmp_path,
        env={"PYTHONPATH": path},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    timings = [json.loads(line) for line in (sweep_dir / "timings.jsonl").read_text().splitlines()]
    assert [row["job"] for row in timings] == [0, 1] and all(row["seconds"] > 0 for row in timings)
    for job in ("0", "1"):  # the sweep's own bookkeeping is the sequential launcher's
        assert json.loads((sweep_dir / job / "summary.json").read_text())["status"] == "finished"
    assert len(json.loads((sweep_dir / "jobs.json").read_text())["jobs"]) == 2
