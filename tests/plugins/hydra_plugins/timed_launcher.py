"""A launcher from outside stylelab (the registry tests): stylelab's sequential launcher that
also writes each job's wall seconds to `<sweep dir>/timings.jsonl`. One file and one yaml
(`conf/hydra/launcher/timed.yaml`); Hydra finds launchers in the `hydra_plugins` namespace."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hydra.core.utils import JobReturn
from omegaconf import DictConfig

from hydra_plugins.stylelab_launchers.sequential_launcher import SequentialLauncher


class TimedLauncher(SequentialLauncher):
    """The jobs one after another, each one's seconds appended to `timings.jsonl`."""

    def run_one(self, sweep_config: DictConfig) -> JobReturn:
        started = time.perf_counter()
        try:
            return super().run_one(sweep_config)
        finally:
            seconds = round(time.perf_counter() - started, 3)
            line = {"job": int(sweep_config.hydra.job.num), "seconds": seconds}
            with open(Path(str(sweep_config.hydra.sweep.dir)) / "timings.jsonl", "a") as file:
                file.write(json.dumps(line) + "\n")
