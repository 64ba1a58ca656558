"""Command line: `python -m stylelab.run [key=value ...]` (Hydra). Thin: config in, runner out."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from stylelab.config import Config
from stylelab.errors import StyleLabError
from stylelab.outputs import CHECKPOINT_FILE, SUMMARY_FILE
from stylelab.preflight import check_job, overrides_checked, record_failure
from stylelab.resources import describe_os_error
from stylelab.runner import EXIT_FAILED, run_synthesis
from stylelab.signals import Interrupted
from stylelab.slurm import submitit_requeue
from stylelab.tracking import RunInfo, make_tracker

log = logging.getLogger("stylelab")
logging.raiseExceptions = False  # a full disk must not turn every log line into a traceback
ConfigStore.instance().store(name="base_config", node=Config)
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
NAME_EXCLUDED = ("resume", "logger", "hydra", "debug")


def run_name(overrides: list[str]) -> str:
    """A readable name from the job's overrides, e.g. `style_weight=1e6,layers=approach2`."""
    kept = [o for o in overrides if not o.lstrip("+~").split("=")[0].startswith(NAME_EXCLUDED)]
    return ",".join(kept) or "defaults"


def sweep_group(cfg: DictConfig) -> str | None:
    """Jobs of one multirun (or of one W&B sweep) share a group; a single run has none."""
    if cfg.logger.get("group"):
        return cfg.logger.group
    if os.environ.get("WANDB_SWEEP_ID"):
        return f"sweep-{os.environ['WANDB_SWEEP_ID']}"
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return "multirun-" + Path(hydra_cfg.sweep.dir).as_posix().strip("/").replace(
            "/", "-"
        ).removeprefix("multirun-")
    return None


def resumed_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """For `resume=<run folder>`: that run's config, with this command's other overrides on top."""
    stored = Path(cfg.resume).expanduser() / "config.yaml"
    if not stored.exists():
        raise StyleLabError(
            f"resume={cfg.resume}: no config.yaml there; give the folder of an earlier run"
        )
    resumed = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(stored))
    extra = [o for o in overrides if not o.startswith(("resume=", "hydra"))]
    resumed.merge_with_dotlist([o for o in extra if "=" in o and not o.startswith(("+", "~"))])
    resumed.resume = str(Path(cfg.resume).expanduser())
    return resumed


def was_interrupted(run_dir: Path) -> bool:
    """The folder holds a checkpoint of a run that was interrupted (not finished or failed)."""
    summary = run_dir / SUMMARY_FILE
    if not (run_dir / CHECKPOINT_FILE).exists() or not summary.exists():
        return False
    try:
        return json.loads(summary.read_text()).get("status") == "interrupted"
    except json.JSONDecodeError:
        return False


def describe_missing(error: MissingMandatoryValue, cfg: DictConfig) -> str:
    key = error.full_key or "a required key"
    pair = cfg.pair.get("name", "?") if "pair" in cfg else "?"
    return f"{key} is not set (pair={pair}): add {key}=/path/to/image.jpg to the command line"


@overrides_checked
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one synthesis; returns the final total loss (the objective sweepers minimise)."""
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    started = False  # run_synthesis writes the summary of a run it started
    try:
        # A requeued job (SLURM preemption, time limit) finds its interrupted run and resumes it.
        if not cfg.resume and was_interrupted(run_dir):
            log.info("%s holds an interrupted run: resuming it", run_dir)
            cfg.resume = str(run_dir)
        if cfg.resume:
            cfg = resumed_config(cfg, overrides)
            run_dir = Path(cfg.resume)
        try:
            config: Config = OmegaConf.to_object(cfg)
        except MissingMandatoryValue as error:
            raise StyleLabError(describe_missing(error, cfg)) from None
        resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
        if not cfg.resume:
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        check_job(config, run_dir)
        tracker = make_tracker(config.logger.name, **logger_options(config))
        info = RunInfo(
            config=resolved,
            run_dir=run_dir,
            name=run_name(overrides),
            group=sweep_group(cfg),
            tags=[config.pair.name, config.layers.name, config.optim.name, *config.logger.tags],
            swept=swept_values(config, overrides),
        )
        started = True
        summary = run_synthesis(config, run_dir, tracker, info)
        log.info("outputs in %s (final image %s)", run_dir, run_dir / "final.png")
        return float(summary.get("final/total", math.nan))
    except Interrupted as error:
        log.error(
            "%s: checkpoint saved; continue with: python -m stylelab.run resume=%s", error, run_dir
        )
        if multirun:
            if submitit_requeue(error):  # a SLURM job submitit could not requeue: report, go on
                return math.inf
            raise
        sys.exit(error.exit_code)
    except (StyleLabError, OSError) as error:
        if cfg.get("debug"):
            traceback.print_exc()
        message = (
            str(error) if isinstance(error, StyleLabError) else describe_os_error(error, run_dir)
        )
        log.error("%s", message)
        record_failure(run_dir, message, overwrite=not started or isinstance(error, OSError))
        if multirun:
            return math.inf
        sys.exit(EXIT_FAILED)


def logger_options(config: Config) -> dict[str, Any]:
    if config.logger.name != "wandb":
        return {}
    return {
        "mode": config.logger.mode,
        "project": config.logger.project,
        "entity": config.logger.entity,
        "job_type": config.logger.job_type,
        "notes": config.logger.notes,
        "init_timeout": config.logger.init_timeout,
    }


def swept_values(config: Config, overrides: list[str]) -> dict[str, Any]:
    """The hyperparameters a comparison table shows: the usual knobs plus every override."""
    values: dict[str, Any] = {
        "pair": config.pair.name,
        "layers": config.layers.name,
        "optimizer": config.optim.name,
        "style_weight": config.style_weight,
        "style_loss": config.style_loss,
        "color": config.color.name,
        "content_weight": config.content_weight,
        "tv_weight": config.tv_weight,
        "image_size": config.image_size,
        "steps": config.steps,
    }
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if not key.startswith(NAME_EXCLUDED):
            values.setdefault(key, value)
    return values


if __name__ == "__main__":
    main()
