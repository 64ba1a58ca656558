"""The evaluation protocol (`stylelab.engine.evaluation`) for runs: its inputs from a config,
the saved image read back, and `eval.every` during the synthesis."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from stylelab.config import Config
from stylelab.engine.evaluation import EVAL_PROTOCOL, Evaluator
from stylelab.engine.images import open_image, pil_to_tensor, resize_long_side, tensor_to_uint8
from stylelab.engine.loop import Observer, Row, RunState
from stylelab.engine.schedule import Stage
from stylelab.errors import first_line
from stylelab.factory import SourceImages, StageMasks, load_vgg
from stylelab.outputs import RunFolder

log = logging.getLogger(__name__)
Metrics = dict[str, Any]


def build_evaluator(
    cfg: Config,
    device: torch.device,
    sources: SourceImages | None = None,
    vgg: torch.nn.Sequential | None = None,
    size: int | None = None,
) -> Evaluator:
    """The protocol against a config's inputs at the evaluation size (`size`, default
    `image_size`: the content's long side; the styles' long side too, whatever `style_size` or
    `style_scale`), with the config's VGG weights, blend and masks (colour mode ignored)."""
    sources = sources or SourceImages.load(cfg)
    size = size or cfg.image_size
    content = pil_to_tensor(resize_long_side(sources.content, size)).to(device)
    styles = [pil_to_tensor(resize_long_side(s, size)).to(device) for s in sources.styles]
    masks, style_masks = StageMasks(cfg, device)(content, styles)
    features = vgg if vgg is not None else load_vgg(cfg)
    return Evaluator(features, content, styles, cfg.pair.style_blend, masks, style_masks)


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as (1, 3, H, W) in [0, 1]; a missing or corrupt file is an `ImageError`."""
    return pil_to_tensor(open_image(path))


def as_saved(image: torch.Tensor) -> torch.Tensor:
    """`image` rounded to 8 bits, as a PNG of it holds it."""
    return pil_to_tensor(Image.fromarray(tensor_to_uint8(image)))


def evaluate_file(evaluator: Evaluator, path: str | Path) -> Metrics:
    """`eval/*` and `eval/protocol` of the image file at `path`."""
    return {**evaluator(read_image(path)), "eval/protocol": EVAL_PROTOCOL}


def evaluate_saved(evaluator: Callable[[], Evaluator], path: Path) -> Metrics:
    """`evaluate_file`, or if the evaluation fails `eval/error` (one line) instead of the
    metrics: the run keeps its other outputs."""
    try:
        return evaluate_file(evaluator(), path)
    except Exception as error:  # any failure: the run itself succeeded
        message = first_line(error)
        log.warning("evaluation failed: %s", message)
        return {"eval/protocol": EVAL_PROTOCOL, "eval/error": message}


class EvalRecorder(Observer):
    """`eval.every`: evaluates the shown image (as a PNG would hold it) at the first loss flush
    at or after every `every` steps, into `eval.jsonl` (`step`: the loss row whose update made
    the image, and `eval/*`) and, through `pop`, into the tracker's row of that step. A failure
    is logged once and ends these evaluations; the run goes on."""

    def __init__(self, every: int, evaluator: Callable[[], Evaluator], folder: RunFolder):
        self.every, self.evaluator, self.folder = every, evaluator, folder
        self.run: RunState | None = None
        self.pending: dict[int, Metrics] = {}
        self.failed = False

    def on_stage(self, run: RunState, stage: Stage) -> None:
        self.run = run

    def on_losses(self, rows: list[Row]) -> None:
        first, last = int(rows[0]["step"]), int(rows[-1]["step"])
        if self.failed or self.run is None or (last + 1) // self.every <= first // self.every:
            return
        try:
            metrics = self.evaluator()(as_saved(self.run.presented(self.run.current.display_image)))
        except Exception as error:
            self.failed = True
            log.warning(
                "eval.every: evaluation failed, no more during this run: %s", first_line(error)
            )
            return
        self.folder.append_eval([{"step": last, **metrics}])
        self.pending[last] = metrics

    def pop(self, step: int) -> Metrics:
        """The metrics evaluated at `step` (once), or none."""
        return self.pending.pop(step, {})
