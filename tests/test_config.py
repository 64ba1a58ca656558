"""Every config composes and validates against the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import stylelab.run  # noqa: F401  (registers the schema)
from stylelab.config import Config
from stylelab.engine.features import parse_layers

CONF = Path(__file__).resolve().parent.parent / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_with(*overrides: str, return_hydra: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra)


def test_defaults_compose_to_the_documented_values() -> None:
    cfg = compose_with()
    assert cfg.style_weight == 1e6 and cfg.content_weight == 1.0 and cfg.steps == 300
    assert cfg.layers.name == "approach2" and cfg.optim.name == "lbfgs"
    assert cfg.model.weights == "imagenet" and cfg.logger.name == "wandb"
    assert cfg.pair.content.startswith("skimage:")  # the default pair works offline
    assert isinstance(OmegaConf.to_object(cfg), Config)


@pytest.mark.parametrize("group", ["layers", "optim", "model", "logger"])
def test_every_option_of_every_group_composes(group: str) -> None:
    for option in options(group):
        cfg = compose_with(f"{group}={option}")
        OmegaConf.to_object(cfg)


@pytest.mark.parametrize("pair", options("pair"))
def test_every_pair_composes_and_shipped_sources_are_set(pair: str) -> None:
    cfg = compose_with(f"pair={pair}")
    assert cfg.pair.name == pair
    for key in ("content", "style"):
        if OmegaConf.is_missing(cfg.pair, key):
            continue  # a picture the user supplies
        values = cfg.pair[key] if OmegaConf.is_list(cfg.pair[key]) else [cfg.pair[key]]
        for value in values:  # a style may be a list of sources (a blend)
            assert value.startswith(("skimage:", "https://")), value


def test_layer_presets_match_the_write_up() -> None:
    approach1, approach2 = (
        compose_with("layers=approach1").layers,
        compose_with("layers=approach2").layers,
    )
    assert list(approach1.style) == [0, 5, 10, 19, 28] and list(approach1.content) == [25]
    assert list(approach2.style) == [2, 7, 12, 21, 30] and list(approach2.content) == [22, 25]
    gatys = compose_with("layers=gatys").layers
    assert parse_layers(gatys.style) == [1, 6, 11, 20, 29] and parse_layers(gatys.content) == [22]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes(experiment: str) -> None:
    cfg = compose_with(f"experiment={experiment}")
    assert OmegaConf.missing_keys(cfg) <= {
        "pair.content",
        "pair.style",
    }  # only the user's own pictures
    if not OmegaConf.missing_keys(cfg):
        OmegaConf.to_object(cfg)


def test_optuna_preset_composes_as_a_multirun() -> None:
    cfg = compose_with("hparams_search=optuna", return_hydra=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert "OptunaSweeper" in cfg.hydra.sweeper._target_
    assert cfg.hydra.sweeper.direction == "minimize"


def test_pareto_preset_minimises_content_and_style_distances() -> None:
    cfg = compose_with("hparams_search=pareto", return_hydra=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert list(cfg.hydra.sweeper.direction) == ["minimize", "minimize"]
    assert list(cfg.sweep_returns) == ["eval/content", "eval/style"]
    assert cfg.hydra.sweeper.sampler._target_ == "optuna.samplers.NSGAIISampler"
    params = cfg.hydra.sweeper.params
    assert set(params) == {"style_weight", "tv_weight", "content_weight", "layers"}
    assert params.style_weight.startswith("tag(log,")
    assert OmegaConf.to_object(compose_with("hparams_search=pareto")).sweep_returns == [
        "eval/content",
        "eval/style",
    ]


@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_launcher_presets_compose(launcher: str) -> None:
    cfg = compose_with(f"hydra/launcher={launcher}", return_hydra=True)
    assert "submitit" in cfg.hydra.launcher._target_.lower()
    if launcher == "slurm":
        for key in (
            "partition",
            "timeout_min",
            "cpus_per_task",
            "gpus_per_node",
            "mem_gb",
            "array_parallelism",
            "setup",
        ):
            assert key in cfg.hydra.launcher, key
