"""What a multirun sweeps: the keys its command (or its sweeper) varies, and typed override values.

Short W&B run names and the end-of-sweep list name a job by its swept settings only; the W&B
comparison table keeps override values as numbers and booleans, as Hydra reads them.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

MULTIRUN_FILE = "multirun.yaml"  # the multirun's config, saved by Hydra's sweeper


@functools.cache
def overrides_parser() -> OverridesParser:
    """One override parser for the process (it keeps no state between parses)."""
    return OverridesParser.create()


def override_key(override: str) -> str:
    """`+a.b=1` -> `a.b`."""
    return override.lstrip("+~").split("=")[0]


def sweep_keys(task_overrides: Iterable[str], sweeper_params: Mapping | None = None) -> list[str]:
    """The keys a multirun sweeps: its sweep overrides (`a=1,2`, `range(..)`, `choice(..)`,
    `interval(..)`) and its sweeper's `params`."""
    parser = overrides_parser()
    keys = [str(key) for key in (sweeper_params or {})]
    for override in task_overrides:
        try:
            parsed = parser.parse_override(str(override))
        except HydraException:
            continue
        if parsed.is_sweep_override():
            keys.append(parsed.key_or_group)
    return list(dict.fromkeys(keys))


def multirun_sweep_keys(sweep_dir: str | Path, sweeper_params: Mapping | None) -> list[str]:
    """`sweep_keys` of the multirun whose folder is `sweep_dir` (from its `multirun.yaml`).

    Every job of a sweep asks; the file is parsed once per process for each content it has (a
    re-run that extends the sweep in the same folder rewrites it, and is parsed anew).
    """
    params = tuple(str(key) for key in (sweeper_params or {}))  # sweep_keys reads only their names
    try:
        saved = (Path(sweep_dir) / MULTIRUN_FILE).read_bytes()
    except OSError:
        saved = b""
    return list(saved_sweep_keys(saved, params))


@functools.lru_cache(maxsize=16)
def saved_sweep_keys(saved: bytes, params: tuple[str, ...]) -> tuple[str, ...]:
    """`sweep_keys` of the task overrides in `saved` (a `multirun.yaml`'s bytes) and the
    sweeper `params`."""
    try:
        config = OmegaConf.load(io.TextIOWrapper(io.BytesIO(saved), encoding="utf-8"))
        task = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
    except (OmegaConfBaseException, ValueError):  # from bytes in memory: no OSError
        task = []
    return tuple(sweep_keys(task, dict.fromkeys(params)))


def typed_value(value: str) -> Any:
    """An override's value as Hydra reads it (`1e6` -> 1000000.0, `true` -> True, `a` -> "a")."""
    try:
        parsed = overrides_parser().parse_override(f"key={value}")
    except HydraException:
        return value
    if parsed.is_sweep_override():
        return value
    typed = parsed.value()
    plain = typed is None or isinstance(typed, (bool, int, float, str, list, dict))
    return typed if plain else value
