"""What `resume=<run folder>` may change, and the checks made before a run is continued.

A resumed run must be the same synthesis: only the keys in `RESUMABLE` may differ from the
run's `config.yaml` (more steps, another device, other logging); everything else (image and
style size, optimiser and its settings, layers, loss weights, pair, model, seed, init,
precision) is refused before anything is written. So is a checkpoint of another run (its run id
differs from the folder's), and a `steps`/`schedule.steps` that leaves nothing to do, changes
stages already done, or changes nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stylelab.config import Config
from stylelab.engine.schedule import Stage
from stylelab.errors import StyleLabError
from stylelab.factory import schedule_of
from stylelab.outputs import CheckpointError, RunFolder, was_interrupted
from stylelab.run_folder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CONFIG_KEY,
    RUN_ID_KEY,
    checkpoint_stage,
    checkpoint_step,
)

# Keys (or key prefixes ending in ".") a resume may change; every other key is fixed. `resume`
# (the folder itself) comes last and is left out of messages.
RESUMABLE = ("steps", "schedule.steps", "device", "debug", "cache_dir", "log.", "logger.", "resume")
_ABSENT = object()


class ResumeError(StyleLabError):
    """`resume=` names no run, or asks to change what a run cannot change."""


def resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted key: value}; lists are single values."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(leaves(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def fixed_changes(old: Any, new: Any, prefix: str = "", shared_only: bool = False) -> list[str]:
    """`key (old -> new)` for every key below `prefix` that differs and may not change.

    `shared_only`: compare only keys both have (a key added to the schema since is no change).
    """
    before, after = leaves(old, prefix), leaves(new, prefix)
    keys = before.keys() & after.keys() if shared_only else before.keys() | after.keys()
    return [
        f"{key} ({before.get(key)} -> {after.get(key)})"
        for key in sorted(keys)
        if before.get(key, _ABSENT) != after.get(key, _ABSENT) and not resumable(key)
    ]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _override_keys(overrides: list[str]) -> list[str]:
    """The config keys this command sets (a group override such as `optim=adam` sets `optim`)."""
    keys = [o.lstrip("+~").split("=")[0] for o in overrides]
    return [k.replace("/", ".") for k in keys if k != "resume" and not k.startswith("hydra")]


def resumed_config(cfg: DictConfig, overrides: list[str], resume: str | None = None) -> DictConfig:
    """The config stored in run folder `resume` (default `cfg.resume`) with this command's
    overrides (`cfg`, composed from them) on top; refuses to change fixed keys."""
    resume = resume or cfg.resume
    folder = Path(resume).expanduser()
    stored_path = folder / CONFIG_FILE
    if not stored_path.is_file():
        raise ResumeError(
            f"resume={resume}: no config.yaml there; give the folder of an earlier run"
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(stored_path))
        resumed = cast(DictConfig, merged)  # merged into a structured Config: a DictConfig
    except (OmegaConfBaseException, yaml.YAMLError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ResumeError(
            f"resume={resume}: its config.yaml does not fit this version of stylelab ({detail}); "
            "resume it with the version that started it, or start a new run"
        ) from None
    refused: list[str] = []
    for key in _override_keys(overrides):
        new = OmegaConf.select(cfg, key, default=_ABSENT)
        if new is _ABSENT:  # e.g. experiment=...: a preset, not one key
            refused.append(f"{key} (a preset)")
            continue
        changes = fixed_changes(_plain(OmegaConf.select(resumed, key)), _plain(new), key)
        refused += changes
        if not changes:
            OmegaConf.update(resumed, key, new, merge=False)
    if refused:
        raise ResumeError(
            f"resume={resume}: a run cannot change {', '.join(refused)}; only "
            f"{', '.join(k + '*' if k.endswith('.') else k for k in RESUMABLE[:-1])} can: "
            "start a new run to change the others"
        )
    resumed.resume = str(folder)
    return resumed


def check_checkpoint(folder: RunFolder, config: DictConfig) -> dict[str, Any]:
    """The folder's checkpoint is readable and was written by the run `config` describes (its
    settings and its run id); returns it (tensors memory-mapped)."""
    checkpoint = folder.load_checkpoint(mmap=True)
    if checkpoint is None:
        raise CheckpointError(
            f"resume={folder.root}: no {CHECKPOINT_FILE} there (the run never stopped cleanly); "
            "start a new run"
        )
    saved = checkpoint.get(CONFIG_KEY)
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{folder.checkpoint_path} does not record its run's config: it cannot be checked "
            "against config.yaml; start a new run"
        )
    differences = fixed_changes(saved, _plain(config), shared_only=True)
    if differences:
        raise CheckpointError(
            f"{folder.checkpoint_path} belongs to another run (it differs from config.yaml in "
            f"{', '.join(differences)}): put back this run's checkpoint, or start a new run"
        )
    # A run from before run ids has none in its folder nor in its checkpoints.
    run_id, written_by = folder.run_id(), checkpoint.get(RUN_ID_KEY)
    if written_by != run_id:
        raise CheckpointError(
            f"{folder.checkpoint_path} belongs to another run (run id {written_by or 'none'}, "
            f"this folder's run is {run_id or 'from before run ids'}): put back this run's "
            "checkpoint, or start a new run"
        )
    return checkpoint


def _stages(cfg: DictConfig) -> list[Stage]:
    return schedule_of(cast(Config, OmegaConf.to_object(cfg)))  # cfg: a structured Config


def _counts(stages: list[Stage]) -> str:
    return "[" + ",".join(str(stage.steps) for stage in stages) + "]"


def check_steps(cfg: DictConfig, checkpoint: dict[str, Any]) -> None:
    """The resumed run (`cfg`) has steps left after the checkpoint's, keeps the steps of the
    stages it has finished, and a changed `steps` or `schedule.steps` changes its stages."""
    saved = checkpoint[CONFIG_KEY]
    before = copy.deepcopy(cfg)
    before.steps = saved.get("steps", cfg.steps)
    before.schedule.steps = (saved.get("schedule") or {}).get("steps", cfg.schedule.steps)
    old, new = _stages(before), _stages(cfg)
    stage, done = checkpoint_stage(checkpoint), checkpoint_step(checkpoint)
    per_stage = cfg.schedule.name != "single" and cfg.schedule.steps is not None
    key = "schedule.steps" if per_stage else "steps"
    asked = f"{key}={_counts(new) if per_stage else cfg.steps}"
    where = f"resume={cfg.resume}: the run has done {done} steps"
    if len(new) > 1:
        where += f" (in stage {stage + 1} of {len(new)}, {old[stage].size} px)"
    changed = [
        f"{name}={value}"
        for name, value, was in [
            ("steps", cfg.steps, before.steps),
            ("schedule.steps", cfg.schedule.steps, before.schedule.steps),
        ]
        if value != was
    ]
    if new == old and changed:
        sets = f", as schedule.steps={_counts(old)} sets them" if per_stage else ""
        raise ResumeError(
            f"resume={cfg.resume}: {', '.join(changed)} changes none of the run's stages{sets}: "
            f"give {key} to run longer"
        )
    if new[:stage] != old[:stage]:
        hint = f"schedule.steps={_counts(old[:stage] + new[stage:])}"
        raise ResumeError(
            f"{where}; {asked} changes the steps of stages it has finished "
            f"({_counts(old[:stage])} -> {_counts(new[:stage])}): give {hint} to change only "
            "the stages still to come"
        )
    if new[-1].end <= done:
        raise ResumeError(
            f"{where}; {asked} ends the run at step {new[-1].end}, leaving nothing to do: "
            f"give more {key} to run longer"
        )
    if new[stage].end < done:
        raise ResumeError(
            f"{where}; {asked} ends that stage at step {new[stage].end}, before the step it "
            f"has reached: give that stage at least {done - new[stage].first_step} steps"
        )


def prepare_run(
    cfg: DictConfig, run_dir: Path, overrides: list[str], folder_key: str = "hydra.run.dir"
) -> tuple[DictConfig, Path]:
    """Hold the run's folder and settle what the run continues: (config, folder). Writes nothing.
    `folder_key`: the key that picks the folder, for messages (a multirun's: hydra.sweep.dir).

    A new run needs a folder no other run holds or has used; a folder with an interrupted run
    (a requeued job) or `resume=` continues that run, changing only what `RESUMABLE` allows.
    Called before Hydra writes a single run's files (`stylelab.callbacks.RunFolderGuard`) and
    again by the job.
    """
    resume = cfg.get("resume") or (str(run_dir) if was_interrupted(run_dir) else None)
    if resume and str(resume).startswith("wandb:"):  # downloaded into this run's folder
        from stylelab.wandb_resume import fetch  # imports this module

        RunFolder(run_dir).lock()
        resume = fetch(cfg, str(resume), run_dir)
    if not resume:
        folder = RunFolder(run_dir, folder_key)
        folder.lock()
        folder.check_fresh()
        return cfg, folder.root
    cfg = resumed_config(cfg, overrides, resume)  # first: a wrong resume= creates no folder
    RunFolder(run_dir, folder_key).lock()  # a multirun job's own folder, else the run's
    folder = RunFolder(cfg.resume)
    folder.lock()
    check_steps(cfg, check_checkpoint(folder, cfg))
    return cfg, folder.root
