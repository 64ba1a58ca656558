"""Weights & Biases tracker: config, per-step losses, images, the GIF, a comparison table."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from stylelab.tracking.base import RunInfo, Tracker

log = logging.getLogger(__name__)
MODES = ("auto", "online", "offline", "disabled")
THUMBNAIL = 128


def has_api_key() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = (
        urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        or "api.wandb.ai"
    )
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """`auto`: WANDB_MODE if set, else online with an API key and offline without."""
    if mode not in MODES:
        raise ValueError(f"unknown logger.mode '{mode}': use one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled", "dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if has_api_key() else "offline"


def thumbnail(image: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    from PIL import Image

    picture = Image.fromarray(image)
    picture.thumbnail((size, size))
    return np.asarray(picture)


class WandbTracker(Tracker):
    """Logs a run to W&B; never lets a W&B problem stop the synthesis."""

    def __init__(
        self,
        mode: str = "auto",
        project: str = "stylelab",
        entity: str | None = None,
        job_type: str = "synthesis",
        notes: str | None = None,
    ):
        self.mode = resolve_mode(mode)
        self.project, self.entity, self.job_type, self.notes = project, entity, job_type, notes
        self.run: Any = None
        self.run_id: str | None = None
        self.info: RunInfo | None = None
        self.pending: dict[int | None, dict[str, Any]] = {}  # images waiting for their step's row
        self.last_step: int | None = None
        self.defined: set[str] = set()  # metrics given a summary

    def start(self, info: RunInfo) -> None:
        import wandb

        self.info = info
        kwargs = dict(
            project=self.project,
            entity=self.entity,
            name=info.name,
            group=info.group,
            job_type=self.job_type,
            tags=[str(tag) for tag in info.tags if tag],
            notes=self.notes,
            config=info.config,
            dir=str(info.run_dir),
            id=info.resume_id,
            resume="allow" if info.resume_id else None,
        )
        try:
            self.run = wandb.init(mode=self.mode, **kwargs)
        except Exception as error:  # network, auth or server trouble: never lose the run
            if self.mode != "online":
                raise
            log.warning("W&B unreachable (%s): logging offline instead", str(error).splitlines()[0])
            self.mode = "offline"
            self.run = wandb.init(mode="offline", **kwargs)
        self.run_id = self.run.id
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        if self.mode == "offline":
            log.info("W&B is offline; upload later with: wandb sync %s", Path(self.run.dir).parent)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.run is None:
            return
        self._summarise_minimum(metrics)
        row: dict[str, Any] = {"step": step, **metrics}
        row.update(self.pending.pop(None, {}))
        row.update(self.pending.pop(step, {}))
        self._log(row, step)

    def _summarise_minimum(self, metrics: dict[str, float]) -> None:
        """The summary keeps the minimum of each loss kind and the total (`loss/<kind>`)."""
        for key in metrics:
            if key not in self.defined and key.count("/") == 1 and key.startswith("loss/"):
                self.run.define_metric(key, step_metric="step", summary="min")
                self.defined.add(key)

    def log_image(
        self, key: str, image: np.ndarray, step: int | None = None, caption: str = ""
    ) -> None:
        if self.run is None:
            return
        import wandb

        # uint8 on purpose: wandb 0.31 logs float images as black.
        self.pending.setdefault(step, {})[f"images/{key}"] = wandb.Image(
            np.ascontiguousarray(image, dtype=np.uint8), caption=caption or None
        )

    def finish(self, exit_code, summary, final_image=None, gif_path=None, inputs=None) -> None:
        if self.run is None:
            return
        import wandb

        try:
            row: dict[str, Any] = {}
            for images in self.pending.values():
                row.update(images)
            self.pending = {}
            if final_image is not None:
                row["images/final"] = wandb.Image(final_image, caption="final")
                if inputs and self.info is not None:
                    row["comparison"] = self._table(final_image, inputs, summary)
            if gif_path is not None and Path(gif_path).exists():
                row["synthesis_gif"] = wandb.Video(str(gif_path), format="gif")
            if row:
                self._log(row, self.last_step if self.last_step is not None else 0)
            self.run.summary.update(
                {key: value for key, value in summary.items() if value is not None}
            )
        except Exception as error:
            log.warning("W&B: could not log the final records (%s)", error)
        finally:
            run, self.run = self.run, None
            try:
                run.finish(exit_code=exit_code)
            except Exception as error:  # e.g. wandb-core already gone after a SIGTERM
                log.warning("W&B: could not finish the run cleanly (%s)", error)

    def _table(
        self, final_image: np.ndarray, inputs: dict[str, np.ndarray], summary: dict[str, Any]
    ) -> Any:
        import wandb

        assert self.info is not None
        hyper = {key: str(value) for key, value in self.info.swept.items()}
        finals = {key: value for key, value in summary.items() if key.startswith("final/")}
        columns = [*inputs, "output", *hyper, *finals]  # content, style, style_2, ...
        images = [wandb.Image(thumbnail(image)) for image in [*inputs.values(), final_image]]
        return wandb.Table(columns=columns, data=[[*images, *hyper.values(), *finals.values()]])

    def _log(self, row: dict[str, Any], step: int) -> None:
        try:
            self.run.log(row, step=step)
            self.last_step = step
        except Exception as error:
            log.warning("W&B: could not log step %d (%s)", step, error)
