"""The hyperparameter columns every comparison of runs shows: the report's table and the
tracker's comparison table (W&B) alike.

A column is named as the config group or key a command line sets (`optim=adam` fills the `optim`
column), so an override and its column are one; `weights` is the summary's name for
`model.weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COLUMNS: dict[str, str] = {  # column: dotted key in the run's config
    "pair": "pair.name",
    "layers": "layers.name",
    "optim": "optim.name",
    "style_weight": "style_weight",
    "style_loss": "style_loss",
    "color": "color.name",
    "content_weight": "content_weight",
    "tv_weight": "tv_weight",
    "steps": "steps",
    "image_size": "image_size",
    "weights": "model.weights",
}
_ABSENT = object()


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """A column's (or any dotted key's) value in a config of nested dicts or dataclasses;
    `default` where the config lacks it."""
    node = config
    for part in COLUMNS.get(key, key).split("."):
        if isinstance(node, Mapping):
            node = node.get(part, _ABSENT)
        else:
            node = getattr(node, part, _ABSENT)
        if node is _ABSENT:
            return default
    return node


def column_values(config: Any) -> dict[str, Any]:
    """Every column's value in `config` (None where it lacks one)."""
    return {column: config_value(config, column) for column in COLUMNS}
