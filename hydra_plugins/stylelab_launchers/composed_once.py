"""Each sweep job's config composed once, not twice, when the launcher runs in this process.

Hydra's sweepers compose every job's config to check it (`Sweeper.validate_batch_is_legal`,
"the launcher may be performing this in a different process") and throw it away; an in-process
launcher then composes it again: about half of a job's start-up. `ComposedOnce` wraps the
sweep's config loader (`HydraContext.config_loader`, which the sweeper and the launcher share):
the first composition of a job is kept (a copy) and handed to the next request for the same
overrides, once. At most `KEPT` are kept (a larger sweep composes the rest again).
"""

from __future__ import annotations

import copy
from typing import Any

from hydra.core.config_loader import ConfigLoader
from hydra.types import HydraContext
from omegaconf import DictConfig

KEPT = 128


class ComposedOnce(ConfigLoader):
    """`inner`, keeping each composed sweep config for one more request with its overrides."""

    keeps_sweep_configs = True  # (the plugin scan reloads this module: no isinstance checks)

    def __init__(self, inner: ConfigLoader):
        self.inner = inner
        self.kept: dict[tuple[int, tuple[str, ...]], DictConfig] = {}

    def load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        key = (id(master_config), tuple(sweep_overrides))
        if key in self.kept:
            return self.kept.pop(key)
        config = self.inner.load_sweep_config(master_config, sweep_overrides)
        if len(self.kept) >= KEPT:
            del self.kept[next(iter(self.kept))]
        self.kept[key] = copy.deepcopy(config)  # the caller may change its own
        return config

    def load_configuration(self, *args: Any, **kwargs: Any) -> DictConfig:
        return self.inner.load_configuration(*args, **kwargs)

    def get_search_path(self) -> Any:
        return self.inner.get_search_path()

    def get_sources(self) -> Any:
        return self.inner.get_sources()

    def list_groups(self, parent_name: str) -> Any:
        return self.inner.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.compute_defaults_list(*args, **kwargs)


def compose_once(hydra_context: HydraContext) -> None:
    """Give the sweep (its sweeper and this launcher) a `ComposedOnce` loader."""
    if not getattr(hydra_context.config_loader, "keeps_sweep_configs", False):
        hydra_context.config_loader = ComposedOnce(hydra_context.config_loader)
