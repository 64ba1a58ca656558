"""The engine's registered components from a config: the objective's terms and the optimiser.

Each component checks its own options where it is built (`stylelab.engine.options`); this module
maps a config onto their nodes and, in one place (`built`), turns their errors into one line
naming the config key. Nothing here loads VGG or images, so `dry_run` is cheap: validation calls
it before a job starts.

Config nodes: the built-in term kinds come from their historic keys (`content_weight`,
`layers.content`, `layers.content_weights`; `style_weight`, `layers.style`,
`layers.style_weights`, `style_loss`; `tv_weight`, `tv_loss`); any other kind from
`terms.<name>` (`kind`, default the name; `module`, imported first so that it registers the
kind; `weight`, `layers`, `layer_weights` and the kind's own options). The optimiser is
`optim.name` (`optim.module` imported first) with the options its kind declares, read from
`optim.<option>` or `optim.options.<option>`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from stylelab.config import style_sources
from stylelab.engine.loop import OptimSettings
from stylelab.engine.objective import normalised_blend
from stylelab.engine.optimizers import OptimizerMaker, optimizer_kind, optimizer_maker
from stylelab.engine.options import OptionError
from stylelab.engine.terms import Term, build_terms
from stylelab.errors import StyleLabError
from stylelab.tracking import check_settings

if TYPE_CHECKING:
    from stylelab.config import Config, OptimConfig

T = TypeVar("T")


@dataclass
class Node:
    """One component's config node: its options, and the config key each option comes from
    (`keys`, else `prefix` + the option's name)."""

    options: dict[str, Any]
    keys: dict[str, str]
    prefix: str = ""

    def key(self, option: str) -> str:
        return self.keys.get(option, self.prefix + option)


def built(node: Node, build: Callable[..., T]) -> T:
    """`build(**node.options)`, its option errors as one line naming the config key."""
    try:
        return build(**node.options)
    except OptionError as error:
        raise StyleLabError(f"{node.key(error.option)}{error.detail}") from None


def import_module(module: str | None, key: str) -> None:
    """Import a plugin module (its import registers its kinds)."""
    if not module:
        return
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise StyleLabError(
            f"{key}={module}: cannot import it ({error}); put its folder on PYTHONPATH"
        ) from None


def term_nodes(cfg: Config) -> list[Node]:
    """The terms' nodes: content, style and tv from their historic keys, then `terms.*`."""
    layers = cfg.layers
    nodes = [
        Node(
            {"kind": "content", "weight": cfg.content_weight, "layers": list(layers.content),
             "layer_weights": layers.content_weights},
            {"weight": "content_weight", "layers": "layers.content",
             "layer_weights": "layers.content_weights"},
        ),
        Node(
            {"kind": "style", "weight": cfg.style_weight, "layers": list(layers.style),
             "layer_weights": layers.style_weights, "statistic": cfg.style_loss},
            {"weight": "style_weight", "layers": "layers.style",
             "layer_weights": "layers.style_weights", "statistic": "style_loss"},
        ),
        Node({"kind": "tv", "weight": cfg.tv_weight, "norm": cfg.tv_loss},
             {"weight": "tv_weight", "norm": "tv_loss"}),
    ]  # fmt: skip
    for name, given in (cfg.terms or {}).items():
        options = {"kind": name, **dict(given)}
        import_module(options.pop("module", None), f"terms.{name}.module")
        nodes.append(Node(options, {}, prefix=f"terms.{name}."))
    return nodes


def terms_of(cfg: Config) -> list[Term]:
    """The objective's terms, every kind built from its node."""
    return [term for node in term_nodes(cfg) for term in built(node, build_terms)]


def optimizer_node(optim: OptimConfig) -> Node:
    """`optim`'s node: the options its kind declares, from `optim.*` or `optim.options.*`."""
    import_module(optim.module, "optim.module")
    extra: Mapping[str, Any] = optim.options or {}
    kind = built(Node({"name": optim.name}, {"name": "optim.name"}), optimizer_kind)
    declared = [field.name for field in fields(kind.Options) if field.name not in extra]
    shared = {key: getattr(optim, key) for key in declared if hasattr(optim, key)}
    keys = {key: f"optim.{key}" for key in shared}
    keys.update({key: f"optim.options.{key}" for key in extra})
    return Node({"name": optim.name, **shared, **extra}, {"name": "optim.name", **keys})


def optimizer_of(optim: OptimConfig) -> OptimizerMaker:
    """The optimiser each stage's Synthesizer builds."""
    node = optimizer_node(optim)
    return built(node, optimizer_maker)


def optim_settings(cfg: Config, precision: str) -> OptimSettings:
    """How each stage optimises: the optimiser, and the settings every kind shares."""
    node = Node(
        {"optimizer": optimizer_of(cfg.optim), "precision": precision, "ema": cfg.optim.ema,
         "keep": cfg.keep, "cuda_graph": cfg.optim.cuda_graph,
         "batch_invariant": cfg.batch_invariant},
        {"ema": "optim.ema", "cuda_graph": "optim.cuda_graph"},
    )  # fmt: skip
    return built(node, OptimSettings)


def dry_run(cfg: Config) -> None:
    """Build the terms, the styles' blend and the optimiser settings (cheap: no VGG, no images)
    and check the tracker's settings, so that a bad option ends the job before it starts, in one
    line."""
    terms_of(cfg)
    blend = Node({"blend": cfg.pair.style_blend, "count": len(style_sources(cfg))},
                 {"blend": "pair.style_blend"})  # fmt: skip
    built(blend, normalised_blend)
    optim_settings(cfg, "fp32" if cfg.precision == "auto" else cfg.precision)
    logger = cfg.logger
    tags = [cfg.pair.name, cfg.layers.name, cfg.optim.name, *logger.tags]
    options = {"mode": logger.mode, "project": logger.project, "artifacts": list(logger.artifacts)}
    check_settings(logger.name, options, tags)
