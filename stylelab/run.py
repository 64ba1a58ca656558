"""Command line: `python -m stylelab.run [key=value ...]` (Hydra). Thin: config in, runner out."""

from __future__ import annotations

import logging
import os
import secrets
import sys
import traceback
from pathlib import Path
from typing import Any, cast

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from stylelab.columns import column_values
from stylelab.config import Config
from stylelab.errors import StyleLabError
from stylelab.outputs import RunFolderError, unlock
from stylelab.pareto import failed_return, sweep_return
from stylelab.preflight import check_job, overrides_checked, record_failure
from stylelab.resources import describe_os_error
from stylelab.resume import prepare_run
from stylelab.run_folder import CONFIG_FILE, SUMMARY_FILE
from stylelab.runner import (
    ALONE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    JobSteps,
    Launch,
    drive,
    synthesis_steps,
)
from stylelab.signals import Interrupted, NotStarted
from stylelab.slurm import submitit_requeue
from stylelab.swept import multirun_sweep_keys, override_key, typed_value
from stylelab.tracking import RunInfo, make_tracker

log = logging.getLogger("stylelab")
logging.raiseExceptions = False  # a full disk must not turn every log line into a traceback
ConfigStore.instance().store(name="base_config", node=Config)
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
NAME_EXCLUDED = ("resume", "logger", "hydra", "debug")


def run_name(overrides: list[str], swept: list[str] | None = None) -> str:
    """A readable name from the job's overrides, e.g. `style_weight=1e6,layers=approach2`: only
    the `swept` keys' (a multirun's) where any of them is set, else every override."""
    kept = [o for o in overrides if not override_key(o).startswith(NAME_EXCLUDED)]
    short = [o for o in kept if override_key(o) in (swept or ())]
    return ",".join(short or kept) or "defaults"


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


def holds_run(folder: str | None) -> bool:
    """`folder` is an earlier run's folder (it has the run's config.yaml)."""
    return bool(folder) and (Path(str(folder)).expanduser() / CONFIG_FILE).is_file()


# For conf/config.yaml, before Hydra composes: a short random id makes run folders unique
# (cached, so a sweep's jobs share their sweep's), and `if_resuming` picks the run folder of
# `resume=` for the log and Hydra's files of a resumed run.
OmegaConf.register_new_resolver(
    "stylelab.run_id", lambda: secrets.token_hex(3), use_cache=True, replace=True
)
OmegaConf.register_new_resolver(
    "stylelab.if_resuming",
    lambda resume, then, otherwise: (
        str(Path(then).expanduser()) if holds_run(resume) else otherwise
    ),
    replace=True,
)


def describe_missing(error: MissingMandatoryValue, cfg: DictConfig) -> str:
    key = error.full_key or "a required key"
    pair = cfg.pair.get("name", "?") if "pair" in cfg else "?"
    return f"{key} is not set (pair={pair}): add {key}=/path/to/image.jpg to the command line"


@overrides_checked
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | list[float]:
    """Run one synthesis; returns what `sweep_returns` names (default the final total loss, the
    objective sweepers minimise; a list of floats for a multi-objective sweeper)."""
    return drive(job_steps(cfg))


def job_steps(cfg: DictConfig, launch: Launch = ALONE) -> JobSteps[float | list[float]]:
    """`main` in steps (see `stylelab.runner.JobSteps`), for the batching launcher: set up the
    job (inside its Hydra job context), yield its synthesis, then report and return. `launch`:
    how the launcher runs it (its progress bar, what the sweep's jobs share)."""
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    started = False  # run_synthesis writes the summary of a run it started
    held = [run_dir]  # the run folders this job locks (a resumed one too)
    returns = cfg.get("sweep_returns", "final/total")
    returns = returns if isinstance(returns, str) else list(returns)
    try:
        asked_to_resume = bool(cfg.resume)
        folder_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        cfg, run_dir = prepare_run(cfg, run_dir, overrides, folder_key)
        held.append(run_dir)
        if cfg.resume and not asked_to_resume:  # a requeued job (SLURM preemption, time limit)
            log.info("%s holds an interrupted run: resuming it", run_dir)
        try:
            config = cast(Config, OmegaConf.to_object(cfg))  # cfg is a structured Config
        except MissingMandatoryValue as error:
            raise StyleLabError(describe_missing(error, cfg)) from None
        resolved = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
        OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)  # on resume: with its new steps
        check_job(config, run_dir)
        tracker = make_tracker(config.logger.name, **logger_options(config))
        swept = swept_keys(hydra_cfg) if multirun else None
        info = RunInfo(
            config=resolved,
            run_dir=run_dir,
            name=run_name(overrides, swept),
            group=sweep_group(cfg),
            tags=[config.pair.name, config.layers.name, config.optim.name, *config.logger.tags],
            swept=swept_values(config, overrides),
        )
        started = True
        summary = yield from synthesis_steps(config, run_dir, tracker, info, launch, checked=True)
        log.info("outputs in %s (final image %s)", run_dir, run_dir / "final.png")
        return sweep_return(summary, config.sweep_returns)
    except Interrupted as error:
        if isinstance(error, NotStarted):
            log.error("never started: %s; a re-run of the sweep runs it", error)
        else:
            log.error(
                "%s: checkpoint saved; continue with: python -m stylelab.run resume=%s",
                error,
                run_dir,
            )
        if multirun:
            if submitit_requeue(error):  # a SLURM job submitit could not requeue: report, go on
                return failed_return(returns)
            raise
        sys.exit(error.exit_code)
    except KeyboardInterrupt:  # the stop signal repeated after the grace period, or came early
        if (run_dir / SUMMARY_FILE).exists():
            log.error("stopped at once, without a checkpoint of this step: see %s", run_dir)
        else:
            log.error("stopped before the synthesis started")
        if multirun:
            raise
        sys.exit(EXIT_INTERRUPTED)
    except (StyleLabError, OSError) as error:
        if cfg.get("debug"):
            traceback.print_exc()
        message = (
            str(error) if isinstance(error, StyleLabError) else describe_os_error(error, run_dir)
        )
        log.error("%s", message)
        # A refused resume, or a folder that holds another run, keeps that run's summary as it was.
        if not isinstance(error, RunFolderError):
            fresh = not started and not cfg.get("resume")
            record_failure(run_dir, message, overwrite=fresh or isinstance(error, OSError))
        if multirun:
            return failed_return(returns)
        sys.exit(EXIT_FAILED)
    finally:
        unlock(*held)  # a multirun's next job (or batch-mate) may use them in this process


def swept_keys(hydra_cfg: Any) -> list[str]:
    """The multirun's swept keys (`multirun_sweep_keys` reads them once per sweep and process)."""
    return multirun_sweep_keys(str(hydra_cfg.sweep.dir), hydra_cfg.sweeper.get("params"))


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
        "artifacts": list(config.logger.artifacts),
    }


def swept_values(config: Config, overrides: list[str]) -> dict[str, Any]:
    """The hyperparameters a comparison table shows: the comparison columns
    (`stylelab.columns`) plus every other override (its value as Hydra reads it: numbers stay
    numbers)."""
    values = column_values(config)
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if not key.startswith(NAME_EXCLUDED):
            values.setdefault(key, typed_value(value))
    return values


if __name__ == "__main__":
    main()
