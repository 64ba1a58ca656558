"""W&B Artifacts of a run: its result, its checkpoints and its input files (by SHA-256).

Names are fixed so that other runs and machines find them: `result-<run id>`,
`checkpoint-<run id>` (a new version per checkpoint) and `input-<sha256>` (one artifact per
distinct file, however many runs use it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from stylelab.tracking.base import InputFile

ARTIFACT_KINDS = ("result", "checkpoint", "inputs")


def artifact_name(kind: str, run_id: str) -> str:
    """`result-<run id>` or `checkpoint-<run id>`."""
    return f"{kind}-{run_id}"


def plain(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata W&B stores as JSON: no None, non-finite floats as text."""
    return {
        key: str(value) if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in metadata.items()
        if value is not None
    }


def log_files(
    run: Any, name: str, kind: str, files: list[Path], metadata: dict, aliases: list[str]
) -> None:
    """One new version of artifact `name` holding `files` (copied now: they may change next)."""
    import wandb

    artifact = wandb.Artifact(name, type=kind, metadata=plain(metadata))
    for path in files:
        if Path(path).is_file():
            artifact.add_file(str(path), name=Path(path).name)
    run.log_artifact(artifact, aliases=aliases)


def use_inputs(run: Any, inputs: dict[str, InputFile]) -> None:
    """Declare each input file as a used artifact named by its digest (online runs only:
    W&B refuses `use_artifact` offline)."""
    import wandb

    for item in inputs.values():
        # the same bytes under the same name: one version, whatever the file was called
        artifact = wandb.Artifact(f"input-{item.sha256}", type="input")
        artifact.add_file(str(item.path), name=f"input{item.path.suffix.lower()}")
        run.use_artifact(artifact)
