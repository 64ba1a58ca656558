"""`resume=wandb:<entity>/<project>/<run id>`: continue a run from its latest checkpoint
artifact on W&B, in a new local run folder, under the same resume rules as `resume=<folder>`.

Only `download_checkpoint` talks to the server; everything after it works on the folder as the
download lays it out (checkpoint.pt, config.yaml, losses.jsonl).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from stylelab.resume import ResumeError
from stylelab.run_folder import CHECKPOINT_FILE, CONFIG_FILE
from stylelab.tracking.wandb_artifacts import artifact_name
from stylelab.tracking.wandb_tracker import resolve_mode

WANDB_PREFIX = "wandb:"


def parse(resume: str) -> tuple[str, str, str]:
    """(entity, project, run id) of `wandb:<entity>/<project>/<run id>`."""
    parts = str(resume).removeprefix(WANDB_PREFIX).strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise ResumeError(
            f"resume={resume}: give the W&B run as wandb:<entity>/<project>/<run id> "
            "(the run page's URL has all three)"
        )
    return parts[0], parts[1], parts[2]


def download_checkpoint(resume: str, name: str, folder: Path, mode: str) -> None:
    """Download artifact `name` (`<entity>/<project>/checkpoint-<id>:latest`) into `folder`."""
    if mode != "online":
        raise ResumeError(
            f"resume={resume}: downloading a W&B run needs W&B online, and it is {mode} here: "
            "log in (wandb login) and use logger.mode=online, or copy the run folder and use "
            "resume=<folder>"
        )
    import wandb

    try:
        wandb.Api().artifact(name, type="checkpoint").download(root=str(folder))
    except Exception as error:  # wandb raises CommError, ValueError, ... for a missing artifact
        raise ResumeError(
            f"resume={resume}: cannot download {name} ({str(error).splitlines()[0]}); a run has "
            "checkpoint artifacts only with logger.artifacts=[result,checkpoint]"
        ) from None


def fetch(cfg: DictConfig, resume: str, run_dir: Path) -> str:
    """Lay out `run_dir` as the W&B run's latest checkpoint (once: a second call finds it) and
    return it as the local run folder to resume; it continues the same W&B run."""
    entity, project, run_id = parse(resume)
    folder = Path(run_dir)
    if not (folder / CHECKPOINT_FILE).is_file():
        name = f"{entity}/{project}/{artifact_name('checkpoint', run_id)}:latest"
        mode = resolve_mode(cfg.logger.mode) if cfg.logger.name == "wandb" else "off (logger=none)"
        folder.mkdir(parents=True, exist_ok=True)
        download_checkpoint(resume, name, folder, mode)
        stored = folder / CONFIG_FILE
        if not (folder / CHECKPOINT_FILE).is_file() or not stored.is_file():
            raise ResumeError(
                f"resume={resume}: {name} lacks {CHECKPOINT_FILE} or {CONFIG_FILE}; "
                "resume from another run"
            )
        config = OmegaConf.load(stored)  # log into the run being continued
        OmegaConf.update(config, "logger.entity", entity)
        OmegaConf.update(config, "logger.project", project)
        OmegaConf.save(config, stored)
    return str(folder)
