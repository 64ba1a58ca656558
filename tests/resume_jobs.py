"""In-process `python -m stylelab.run` jobs for the resume tests: no subprocess, no Hydra files.

`job(run_dir, *overrides, stop_at=k)` runs `stylelab.run.job_steps` as the CLI's single run
would (the same checks, the same files in the run folder) and returns its exit code; `stop_at`
sends the process SIGINT after step `k`, as Ctrl-C would.
"""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from stylelab.engine.synthesis import Synthesizer
from stylelab.run import job_steps
from stylelab.runner import drive
from tests.conftest import ROOT

# 32 px, shallow layers (a 16 px pyramid stage still fits), every row flushed at once.
TINY = [
    "model.weights=random",
    "image_size=32",
    "logger=none",
    "layers.style=[0,5]",
    "layers.content=[7]",
    "log.flush_every=1",
    "log.image_every=1000",
]
PYRAMID = ["schedule=pyramid", "schedule.sizes=[16,32]"]


def job(run_dir: Path, *overrides: str, stop_at: int | None = None) -> int:
    """Exit code of `python -m stylelab.run overrides... hydra.run.dir=run_dir`, in-process."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[*overrides, f"hydra.run.dir={run_dir}"],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    task = copy.deepcopy(cfg)
    with open_dict(task):
        del task["hydra"]
    real_step = Synthesizer.step

    def step(self: Synthesizer) -> dict[str, torch.Tensor]:
        terms = real_step(self)
        if self.step_count == stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # the loop checkpoints after this step
        return terms

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Synthesizer, "step", step)
        try:
            drive(job_steps(task))
        except SystemExit as exit_:
            return int(exit_.code or 0)
        finally:
            HydraConfig.instance().cfg = None  # no job context left for later tests
    return 0


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]


def checkpoint_step(run_dir: Path) -> int:
    return int(torch.load(run_dir / "checkpoint.pt", weights_only=True)["synthesis"]["step"])
