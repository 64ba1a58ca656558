"""One style-transfer run from a `Config`: images in, a synthesis with its records out.

Free of Hydra and W&B: the CLI (`stylelab.run`) builds the config and the tracker and calls
`run_synthesis`, which writes the run folder and reports to the tracker.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from stylelab.config import Config, validate
from stylelab.engine.device import resolve_device
from stylelab.engine.features import VGGFeatures, layer_name, load_vgg19_features, parse_layers
from stylelab.engine.images import pil_to_tensor, resize_long_side, tensor_to_uint8
from stylelab.engine.losses import GatysLoss
from stylelab.engine.sources import load_source
from stylelab.engine.synthesis import Synthesizer, default_precision, initial_image
from stylelab.errors import DivergenceError, ImageError, StyleLabError
from stylelab.outputs import FINAL_IMAGE, RunFolder
from stylelab.signals import Interrupted, stop_on_signals
from stylelab.tracking import RunInfo, Tracker

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def load_pair(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Content and style images as (1, 3, H, W) tensors, resized to image_size / style_size."""
    content = resize_long_side(load_source(cfg.pair.content, cfg.cache_dir), cfg.image_size)
    style = resize_long_side(
        load_source(cfg.pair.style, cfg.cache_dir), cfg.style_size or cfg.image_size
    )
    return pil_to_tensor(content), pil_to_tensor(style)


def check_size(image: torch.Tensor, encoder: VGGFeatures, what: str, size_key: str) -> None:
    side = min(image.shape[-2:])
    if side < encoder.min_size:
        deepest = layer_name(encoder.layers[-1])
        raise ImageError(
            f"the {what} image is {image.shape[-1]}x{image.shape[-2]} px, too small for layer {deepest}: "
            f"its shorter side must be at least {encoder.min_size} px (raise {size_key} or use shallower layers)"
        )


def memory_estimate_gib(pixels: int, history_size: int, optimizer: str) -> float:
    """Rough memory need: VGG activations kept for backward (~1.6 KB/pixel fp32) + optimiser history."""
    activations = pixels * 1600
    history = (
        pixels * 3 * 4 * (2 * history_size + 3) if optimizer == "lbfgs" else pixels * 3 * 4 * 3
    )
    return (activations + history) / 2**30


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def out_of_memory(cfg: Config) -> StyleLabError:
    need = memory_estimate_gib(cfg.image_size**2, cfg.optim.history_size, cfg.optim.name)
    return StyleLabError(
        f"out of memory on {cfg.device} at image_size={cfg.image_size} (needs roughly {need:.1f} GiB "
        "for a square image): lower image_size, or use optim.history_size=10, optim=adam or precision=bf16"
    )


class LossBuffer:
    """Collects per-step loss tensors on the device and reads them back in one transfer."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.values: list[torch.Tensor] = []
        self.keys: list[str] | None = None

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        if self.keys is None:
            self.keys = list(terms)
        self.steps.append(step)
        self.values.append(torch.stack([terms[key].float() for key in self.keys]))

    def flush(self) -> list[dict[str, float]]:
        if not self.values:
            return []
        table = torch.stack(self.values).cpu().tolist()
        rows = [
            {"step": step, **dict(zip(self.keys, row, strict=True))}
            for step, row in zip(self.steps, table, strict=True)
        ]
        self.steps, self.values = [], []
        return rows


def run_synthesis(
    cfg: Config, run_dir: str | Path, tracker: Tracker, info: RunInfo
) -> dict[str, Any]:
    """Run one synthesis into `run_dir`, reporting to `tracker`; returns the summary.

    The tracker run is always finished: exit code 0 on success, 1 on failure, 128+signal
    when interrupted. Raises `StyleLabError` for bad input, `DivergenceError` for a NaN/inf loss
    and `Interrupted` after SIGINT/SIGTERM/SIGUSR2 (with a checkpoint saved in `run_dir`).
    """
    folder = RunFolder(run_dir)
    checkpoint = folder.load_checkpoint() if cfg.resume else None
    if cfg.resume and checkpoint is None:
        raise StyleLabError(
            f"resume={cfg.resume}: no checkpoint found there; give a run folder with checkpoint.pt"
        )
    info.resume_id = info.resume_id or (checkpoint or {}).get("tracker_run_id")
    # From here on a signal only sets a flag: the loop checkpoints at its next step.
    with stop_on_signals() as received:
        tracker.start(info)
        started = time.perf_counter()
        try:
            validate(cfg)
            try:
                return _synthesize(cfg, folder, tracker, checkpoint, received)
            except torch.OutOfMemoryError:
                raise out_of_memory(cfg) from None
        except BaseException as error:
            interrupted = isinstance(error, Interrupted | KeyboardInterrupt)
            exit_code = (
                getattr(error, "exit_code", EXIT_INTERRUPTED) if interrupted else EXIT_FAILED
            )
            summary = {
                "status": "interrupted" if interrupted else "failed",
                "error": str(error) or type(error).__name__,
                "seconds": time.perf_counter() - started,
            }
            if interrupted:  # a forced stop (KeyboardInterrupt: signal repeated) saves none
                summary["checkpoint"] = (
                    isinstance(error, Interrupted) or folder.checkpoint_path.exists()
                )
            folder.write_summary(summary)
            tracker.finish(exit_code, summary)
            raise


def _synthesize(
    cfg: Config,
    folder: RunFolder,
    tracker: Tracker,
    checkpoint: dict | None,
    received: list[int],
) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    precision = cfg.precision if cfg.precision != "auto" else default_precision(device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    content, style = load_pair(cfg)
    style_layers, content_layers = parse_layers(cfg.layers.style), parse_layers(cfg.layers.content)
    encoder = VGGFeatures(
        load_vgg19_features(cfg.model.weights, seed=cfg.seed),
        style_layers + content_layers,
        cfg.model.pooling,
    )
    check_size(content, encoder, "content", "image_size")
    check_size(style, encoder, "style", "style_size")
    pixels = content.shape[-1] * content.shape[-2]
    log.info(
        "content %dx%d, style %dx%d, device %s (%s), estimated memory %.1f GiB",
        content.shape[-1],
        content.shape[-2],
        style.shape[-1],
        style.shape[-2],
        device,
        precision,
        memory_estimate_gib(pixels, cfg.optim.history_size, cfg.optim.name),
    )
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    encoder = encoder.to(device, memory_format=memory_format)
    content, style = content.to(device), style.to(device)
    loss = GatysLoss(
        encoder,
        content,
        style,
        content_layers,
        style_layers,
        content_weight=cfg.content_weight,
        style_weight=cfg.style_weight,
        tv_weight=cfg.tv_weight,
        content_layer_weights=cfg.layers.content_weights,
        style_layer_weights=cfg.layers.style_weights,
    )
    init_source = None
    if cfg.init == "image":
        init_source = pil_to_tensor(load_source(cfg.init_image, cfg.cache_dir)).to(device)
    start = initial_image(cfg.init, content, style, init_source, seed=cfg.seed)
    synth = Synthesizer(
        loss, start, cfg.optim.name, cfg.optim.lr, cfg.optim.history_size, precision=precision
    )
    if checkpoint is not None:
        synth.load_state_dict(checkpoint["synthesis"])
        folder.truncate_losses(before_step=synth.step_count)
        log.info(
            "resuming from step %d of %d (%s)", synth.step_count, cfg.steps, folder.checkpoint_path
        )

    inputs = {"content": tensor_to_uint8(content), "style": tensor_to_uint8(style)}
    if synth.step_count == 0:
        for key, image in inputs.items():
            folder.save_image(f"{key}.png", image)
            tracker.log_image(key, image, caption=getattr(cfg.pair, key))

    buffer, last_rows = LossBuffer(), [{}]
    last_finite = synth.image.clone()
    started, first_step = time.perf_counter(), synth.step_count

    def save_checkpoint(with_optimizer: bool = True) -> None:
        flush()  # the records on disk and in the tracker end where the checkpoint starts
        state = synth.state_dict()
        if (
            not with_optimizer
        ):  # the history of L-BFGS is large; a finished run keeps the image only
            state["optimizer"] = None
        folder.save_checkpoint(
            {"synthesis": state, "tracker_run_id": tracker.run_id, "config": asdict(cfg)}
        )

    def flush() -> None:
        rows = buffer.flush()
        if not rows:
            return
        bad = next((row for row in rows if not math.isfinite(row["total"])), None)
        good_rows = rows if bad is None else [row for row in rows if row["step"] < bad["step"]]
        folder.append_losses(good_rows)
        for row in good_rows:
            tracker.log_metrics(row["step"], {k: v for k, v in row.items() if k != "step"})
        if bad is not None:
            folder.save_image(FINAL_IMAGE, last_finite)
            raise DivergenceError(
                f"the loss became {bad['total']} at step {bad['step']}: the last finite image is in "
                f"{folder.root / FINAL_IMAGE}; lower optim.lr or the loss weights, or use precision=fp32"
            )
        last_rows[0] = rows[-1]
        last_finite.copy_(synth.image)

    progress = tqdm(
        total=cfg.steps,
        initial=synth.step_count,
        desc="synthesis",
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
        disable=None,
    )
    with progress:
        while synth.step_count < cfg.steps:
            step = synth.step_count
            if step % cfg.log.image_every == 0:
                frame = tensor_to_uint8(synth.image)
                folder.save_frame(step, frame)
                tracker.log_image("synthesis", frame, step=step)
            buffer.add(step, synth.step())
            progress.update(1)
            if (
                synth.step_count % cfg.log.flush_every == 0
                or synth.step_count == cfg.steps
                or received
            ):
                flush()
                row = last_rows[0]
                progress.set_postfix(
                    total=f"{row['total']:.4g}",
                    content=f"{row['content']:.3g}",
                    style=f"{row['style']:.3g}",
                    tv=f"{row['tv']:.3g}",
                    refresh=False,
                )
            if received:
                save_checkpoint()
                folder.save_image(FINAL_IMAGE, synth.image)
                raise Interrupted(received[0], synth.step_count)
            if cfg.log.checkpoint_every and synth.step_count % cfg.log.checkpoint_every == 0:
                save_checkpoint()

    seconds = time.perf_counter() - started
    final = tensor_to_uint8(synth.image)
    folder.save_image(FINAL_IMAGE, final)
    gif = folder.write_gif(final, cfg.log.gif_seconds_per_frame)
    save_checkpoint(with_optimizer=False)
    evaluations = synth.step_count - first_step
    summary = {
        "status": "finished",
        **{f"final/{key}": value for key, value in last_rows[0].items() if key != "step"},
        "steps": synth.step_count,
        "seconds": seconds,
        "evaluations_per_second": evaluations / seconds if seconds > 0 else float("nan"),
        "peak_memory_mib": peak_memory_mib(device),
        "device": str(device),
        "precision": precision,
        "weights": cfg.model.weights,
        "content_size": list(content.shape[-2:]),
    }
    folder.write_summary(summary)
    tracker.finish(EXIT_OK, summary, final_image=final, gif_path=gif, inputs=inputs)
    return summary
