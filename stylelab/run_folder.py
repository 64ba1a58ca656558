"""The run folder's format: its file names, summary.json and the status words, losses.jsonl, the
checkpoint keys read outside the engine, and Hydra's record of a job's overrides.

Every reader of a run folder reads it through this module (writing, locking and checkpoint
files are `stylelab.outputs.RunFolder`'s), so a missing or unreadable file means one thing
everywhere: a job folder without a readable summary.json is `Status.KILLED`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from stylelab.errors import first_line

LOSSES_FILE = "losses.jsonl"
EVAL_FILE = "eval.jsonl"  # eval.every: the evaluation protocol's metrics, one row per evaluation
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.yaml"
FINAL_IMAGE = "final.png"
GIF_FILE = "synthesis.gif"
LOG_FILE = "run.log"
LOCK_FILE = ".lock"  # held (flock) by the process writing the run, for the run's whole life
RUN_ID_FILE = "run_id"  # the run's id, written when it starts; its checkpoints carry it too
RUN_FILES = (CONFIG_FILE, LOSSES_FILE, SUMMARY_FILE, CHECKPOINT_FILE)  # a run was here
HYDRA_DIR = ".hydra"  # Hydra's records of a job: a folder with it is a job folder
OVERRIDES_FILE = f"{HYDRA_DIR}/overrides.yaml"


class Status:
    """How a run ended: summary.json's `status` words (KILLED: the job left no readable one).
    Plain strings, as summary.json, W&B and the end-of-sweep list hold them."""

    FINISHED: Final = "finished"
    FAILED: Final = "failed"
    INTERRUPTED: Final = "interrupted"  # stopped by a signal; continued with resume=<folder>
    KILLED: Final = "killed"  # ended without writing summary.json (SIGKILL, out of memory, ...)
    NOT_STARTED: Final = "not started"  # set up, stopped before its first step
    ALL: Final = (FINISHED, FAILED, INTERRUPTED, KILLED, NOT_STARTED)

    @staticmethod
    def shown(status: str) -> str:
        """The word the end-of-sweep list uses ("never started" for NOT_STARTED)."""
        return "never started" if status == Status.NOT_STARTED else status


NOT_STARTED = Status.NOT_STARTED
KILLED_ERROR = (
    "no summary.json, the job ended without writing one (SIGKILL, out of memory, node failure "
    "or a time limit without requeue); see its run.log"
)


def read_summary(folder: str | Path) -> dict[str, Any]:
    """The run's summary.json; a missing or unreadable one (or one without a status) reads as
    `Status.KILLED`, with an `error` that says which."""
    path = Path(folder) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return {"status": Status.KILLED, "error": KILLED_ERROR}
    except (OSError, ValueError) as error:
        detail = error.strerror if isinstance(error, OSError) and error.strerror else None
        return {"status": Status.KILLED, "error": _unreadable(detail or first_line(error))}
    if not isinstance(summary, dict):
        return {"status": Status.KILLED, "error": _unreadable("not a JSON object")}
    if not isinstance(summary.get("status"), str):
        return {**summary, "status": Status.KILLED, "error": _unreadable("no status")}
    return summary


def _unreadable(detail: str) -> str:
    return f"summary.json unreadable ({detail}), the job ended without a whole one; see its run.log"


def status_of(summary: Mapping[str, Any]) -> str:
    """A summary's status word (`Status.KILLED` where it has none)."""
    status = summary.get("status")
    return status if isinstance(status, str) else Status.KILLED


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (losses.jsonl, eval.jsonl); [] if there is none. A line cut
    short (a job killed while writing it) is left out."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_losses(folder: str | Path) -> list[dict[str, Any]]:
    """losses.jsonl: one row per step (`step`, `stage`, `size`, each loss)."""
    return read_rows(Path(folder) / LOSSES_FILE)


def read_overrides(job: str | Path) -> list[str] | None:
    """The overrides Hydra recorded for a job (`.hydra/overrides.yaml`); None where there is no
    such file or it is not a list."""
    try:
        overrides = yaml.safe_load((Path(job) / OVERRIDES_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if overrides is None:
        return []
    return [str(o) for o in overrides] if isinstance(overrides, list) else None


def is_job_folder(folder: Path) -> bool:
    """Hydra made `folder` for a job (it holds `.hydra/`)."""
    return (folder / HYDRA_DIR).is_dir()


def job_folders(folder: Path) -> list[Path]:
    """The job folders of a multirun folder in job order (numbers first, by value)."""
    jobs = [path for path in folder.iterdir() if is_job_folder(path)] if folder.is_dir() else []
    return sorted(
        jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )


# The checkpoint's keys read outside the engine (the engine's own state is under "synthesis").
SYNTHESIS_KEY, STAGE_KEY = "synthesis", "stage"
RUN_ID_KEY, TRACKER_RUN_ID_KEY, CONFIG_KEY = "run_id", "tracker_run_id", "config"


def checkpoint_extra(
    run_id: str | None, tracker_run_id: str | None, config: dict[str, Any]
) -> dict[str, Any]:
    """What a run adds to each of its checkpoints: its ids and its config."""
    return {RUN_ID_KEY: run_id, TRACKER_RUN_ID_KEY: tracker_run_id, CONFIG_KEY: config}


def checkpoint_step(state: Mapping[str, Any]) -> int:
    """The step a checkpoint was taken at (the run's steps done)."""
    return int(state[SYNTHESIS_KEY]["step"])


def checkpoint_stage(state: Mapping[str, Any]) -> int:
    """The stage a checkpoint was taken in (0 for a run of one stage)."""
    return int(state.get(STAGE_KEY, 0))
