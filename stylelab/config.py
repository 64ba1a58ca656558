"""The configuration schema: plain dataclasses (Hydra registers them; the engine never imports Hydra).

Top-level keys are the knobs researchers sweep; groups mirror the engine's concepts:
`pair` (images), `layers` (which VGG outputs), `optim`, `model` (VGG weights), `logger` (tracking),
`color` (colour preservation).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from omegaconf import MISSING

from stylelab.engine.color import COLOR_MODES, HISTOGRAM_METHODS
from stylelab.engine.images import DEFAULT_MAX_PIXELS
from stylelab.engine.schedule import SCHEDULES, pyramid_sizes
from stylelab.engine.synthesis import INITS
from stylelab.errors import StyleLabError

MAX_IMAGE_SIZE = 16384  # VGG-19 at this size needs ~400 GiB; larger is always a typo


@dataclass
class PairConfig:
    """A content/style pair; each source is a path, `skimage:<name>` or an http(s) URL[#sha256=...]."""

    name: str = MISSING
    content: str = MISSING
    style: Any = MISSING  # one source, or a list of sources blended
    style_blend: list[float] | None = None  # one weight per style (default equal; normalised)
    # Spatial control: one mask per style in the content's frame (white: that style applies),
    # a source or mask:left|right|top|bottom|all|none; with masks, style_blend scales each
    # style's region loss (default equal: each at full style_weight).
    style_masks: Any = None  # one source, or a list of them (one per style)
    style_source_masks: Any = None  # likewise, in each style's own frame (null: all of it)


@dataclass
class LayersConfig:
    """VGG-19 layers by torchvision index (0..36) or name (conv4_2, relu4_2, pool3)."""

    name: str = MISSING
    style: list[Any] = MISSING
    content: list[Any] = MISSING
    style_weights: list[float] | None = None  # one per style layer; default all 1
    content_weights: list[float] | None = None


@dataclass
class OptimConfig:
    """The optimiser: a kind registered in `stylelab.engine.optimizers` with the options its
    `Options` declares, read from these keys or from `options` (README "Extending")."""

    name: str = "lbfgs"  # lbfgs | adam | a kind registered by `module`
    module: str | None = None  # a module imported first (it registers the optimiser)
    options: dict[str, Any] = field(default_factory=dict)  # the kind's options not listed here
    lr: float = 1.0
    history_size: int = 100  # L-BFGS only
    ema: float = 0.0  # averaged iterate shown and returned: 0 off, else its decay (0.9)
    tolerance: float = 0.0  # 0: off; else stop once the best total falls by less than this ...
    window: int = 50  # ... (relative) over the last `window` evaluations (last stage only)
    # auto (armijo for L-BFGS, none for Adam) | none (fixed step, as the PyTorch tutorial) |
    # armijo (L-BFGS only: backtracking, each step is still one evaluation)
    line_search: str = "auto"
    cuda_graph: bool = True  # CUDA: replay each step as one CUDA graph (false: eager steps)


@dataclass
class ColorConfig:
    """Colour preservation: none | histogram (style colours matched to the content's) |
    luminance (synthesis on luminance, content colours) | original (result luminance,
    content colours)."""

    name: str = "none"
    histogram_method: str = "cholesky"  # cholesky | eigen (histogram mode's affine map)


@dataclass
class ScheduleConfig:
    """`single`: one stage at image_size; `pyramid`: coarse-to-fine stages up to image_size."""

    name: str = "single"  # single | pyramid
    min_size: int = 128  # pyramid: the first stage's long side
    factor: float = 1.4142135623730951  # pyramid: growth between stages (sqrt 2)
    sizes: Any = None  # pyramid: explicit sizes, whole numbers ending at image_size (checked)
    steps: Any = None  # pyramid: steps per stage, one number or one per stage (default: steps)


@dataclass
class ModelConfig:
    weights: str = "imagenet"  # imagenet | random | <path to a state dict>
    pooling: str = "max"  # max | avg (the paper prefers avg)


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | none
    mode: str = "auto"  # auto | online | offline | disabled
    project: str = "stylelab"
    entity: str | None = None
    group: str | None = None  # default: one group per multirun
    job_type: str = "synthesis"
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    init_timeout: float = 15.0  # seconds to wait for the W&B server before logging offline
    # W&B Artifacts: result (final image, GIF, config, summary, losses), checkpoint (a version
    # per checkpoint; large) and inputs (the input files by SHA-256, online only); [] for none
    artifacts: list[str] = field(default_factory=lambda: ["result"])


@dataclass
class LogConfig:
    # steps between intermediate frames (PNG, GIF frame, W&B image); default (null): about 30
    # frames per run, i.e. every step up to 30 steps, every 10th of 300
    image_every: int | None = None
    flush_every: int = 10  # steps between reading losses back from the device
    gif_seconds_per_frame: float = 0.1
    checkpoint_every: int = (
        0  # steps between full checkpoints (0: only on interruption); L-BFGS state is large
    )


@dataclass
class EvalConfig:
    """The fixed evaluation protocol (stylelab.engine.evaluation; README "Comparing runs"):
    always on the saved final image; `every` N steps too (null: at the end only)."""

    every: int | None = None


@dataclass
class Config:
    pair: PairConfig = field(default_factory=PairConfig)
    layers: LayersConfig = field(default_factory=LayersConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    color: ColorConfig = field(default_factory=ColorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    content_weight: float = 1.0
    style_weight: float = 1e6
    tv_weight: float = 10.0  # d2l's value, which the write-up followed
    steps: int = 300
    image_size: int = 512
    style_size: int | None = None  # style long side in px, fixed (default: style_scale)
    style_scale: float = 1.0  # style long side = style_scale x the stage's long side
    # gram (Gatys) | w2 (Gaussian Wasserstein-2; needs another style_weight: experiment=w2_offline)
    style_loss: str = "gram"
    tv_loss: str = "l1"  # l1 (mean |difference|, as d2l) | l2 (squared, smooth, as jcjohnson)
    keep: str = "best"  # the result: best (lowest total) iterate | last iterate
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16
    # CPU: convolutions without oneDNN, whose rounding depends on the batch size, so that a job
    # gives the same losses alone and in any batch of the batching launcher (slower: README)
    batch_invariant: bool = False
    init: str = "content"  # content | noise | style | image
    init_image: str | None = None  # source for init=image
    resume: str | None = None  # a run folder to continue from its checkpoint
    cache_dir: str | None = None  # downloaded images (default ~/.cache/stylelab)
    max_input_pixels: int = DEFAULT_MAX_PIXELS  # larger inputs are refused (decompression bombs)
    debug: bool = False  # show tracebacks for errors
    # further loss terms, by name: {kind (default: the name), module (imported first: it
    # registers the kind), weight, layers, layer_weights, the kind's options} (README "Extending")
    terms: dict[str, Any] = field(default_factory=dict)
    # what a run returns to a sweeper: a summary key, or a list of them for a multi-objective
    # sweeper (hparams_search=pareto: [eval/content, eval/style]); a failed run returns inf each
    sweep_returns: Any = "final/total"


def validate(cfg: Config) -> None:
    """Reject values that would fail later, with one line saying what to change: the values
    only the config has here, then the engine's components and the tracker's settings, each
    checked where it lives, by building them in a dry run (`components.dry_run`)."""
    from stylelab.components import dry_run  # (it reads this schema: imported when used)

    for ok, message in (
        *_setting_checks(cfg),
        *_schedule_checks(cfg),
        *synthesis_checks(cfg),
    ):
        if not ok:
            raise StyleLabError(message)
    dry_run(cfg)


def _finite_at_least(value: float, low: float, strict: bool = False) -> bool:
    return math.isfinite(value) and (value > low if strict else value >= low)


def _names_summary_keys(setting: Any) -> bool:
    keys = [setting] if isinstance(setting, str) else setting
    return (
        isinstance(keys, list | tuple)
        and len(keys) > 0
        and all(isinstance(key, str) and key.strip() for key in keys)
    )


def _setting_checks(cfg: Config) -> Iterator[tuple[bool, str]]:
    yield cfg.steps >= 1, f"steps={cfg.steps}: must be at least 1"
    for key, size in (("image_size", cfg.image_size), ("style_size", cfg.style_size)):
        yield (
            size is None or 1 <= size <= MAX_IMAGE_SIZE,
            f"{key}={size}: must be a number of pixels from 1 to {MAX_IMAGE_SIZE}",
        )
    yield (
        cfg.max_input_pixels >= 1,
        f"max_input_pixels={cfg.max_input_pixels}: must be a positive number of pixels",
    )
    yield cfg.init in INITS, f"init={cfg.init}: use one of {', '.join(INITS)}"
    yield cfg.init != "image" or bool(cfg.init_image), "init=image needs init_image=<path or URL>"
    yield (
        cfg.precision in ("auto", "fp32", "bf16"),
        f"precision={cfg.precision}: use auto, fp32 or bf16",
    )
    yield (
        _names_summary_keys(cfg.sweep_returns),
        (
            f"sweep_returns={cfg.sweep_returns}: give a summary key such as final/total, or a list "
            "such as [eval/content,eval/style]"
        ),
    )
    yield (
        cfg.log.image_every is None or cfg.log.image_every >= 1,
        f"log.image_every={cfg.log.image_every}: must be >= 1 (or null: about 30 frames a run)",
    )
    yield cfg.log.flush_every >= 1, f"log.flush_every={cfg.log.flush_every}: must be >= 1"
    yield (
        cfg.eval.every is None or cfg.eval.every >= 1,
        f"eval.every={cfg.eval.every}: must be >= 1 (or null: evaluate at the end only)",
    )
    yield (
        cfg.log.checkpoint_every >= 0,
        f"log.checkpoint_every={cfg.log.checkpoint_every}: must be >= 0",
    )


def _whole(value: Any) -> bool:
    """A whole number >= 1 (not a bool, a float or a string of digits)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _schedule_checks(cfg: Config) -> Iterator[tuple[bool, str]]:
    """Every schedule value, each with one line naming its key."""
    s = cfg.schedule
    yield s.name in SCHEDULES, f"schedule={s.name}: use {' or '.join(SCHEDULES)}"
    if s.name != "pyramid":
        for key in ("sizes", "steps"):
            yield (
                getattr(s, key) is None,
                f"schedule.{key}={getattr(s, key)!r} is only used by schedule=pyramid: add "
                f"schedule=pyramid, or drop schedule.{key}",
            )
        return
    yield _whole(s.min_size), f"schedule.min_size={s.min_size!r}: must be a whole number >= 1"
    yield _finite_at_least(s.factor, 1, strict=True), f"schedule.factor={s.factor}: must be > 1"
    listed = isinstance(s.sizes, list | tuple)
    sizes = list(s.sizes) if listed else []
    yield (
        s.sizes is None
        or (listed and all(_whole(n) for n in sizes) and all(a < b for a, b in pairwise(sizes))),
        f"schedule.sizes={s.sizes!r}: must be a list of whole numbers >= 1, each larger than the "
        "one before (e.g. schedule.sizes=[256,512])",
    )
    yield (
        not sizes or sizes[-1] == cfg.image_size,
        f"schedule.sizes={sizes}: must end at image_size={cfg.image_size}",
    )
    steps = s.steps
    per_stage = isinstance(steps, list | tuple)
    yield (
        steps is None or _whole(steps) or (per_stage and all(_whole(n) for n in steps)),
        f"schedule.steps={steps!r}: give a whole number >= 1, or a list of them, one per stage "
        "(e.g. schedule.steps=[200,100])",
    )
    pyramid_ok = _whole(s.min_size) and _finite_at_least(s.factor, 1, strict=True)
    if not per_stage or not (sizes or (pyramid_ok and 1 <= cfg.image_size <= MAX_IMAGE_SIZE)):
        return  # (validate runs every check: no pyramid from a bad min_size or factor)
    stages = len(sizes or pyramid_sizes(cfg.image_size, s.min_size, s.factor))
    yield (
        len(steps) == stages,
        f"schedule.steps={list(steps)}: {len(steps)} step counts for {stages} stages: give one per stage, or one number for all",
    )


def style_sources(cfg: Config) -> list[str]:
    """`pair.style` as a list: one source or several."""
    style = cfg.pair.style
    return [str(s) for s in style] if isinstance(style, list | tuple) else [str(style)]


def mask_sources(masks: Any) -> list[str | None] | None:
    """`pair.style_masks` or `pair.style_source_masks` as a list (None if not given)."""
    if masks is None:
        return None
    items = list(masks) if isinstance(masks, list | tuple) else [masks]
    return [None if item is None else str(item) for item in items]


def synthesis_checks(cfg: Config) -> list[tuple[bool, str]]:
    """Checks of the styles, schedule, output and averaging options."""
    styles = style_sources(cfg)
    return [
        (bool(styles), "pair.style=[]: give at least one style image"),
        (cfg.style_scale > 0, f"style_scale={cfg.style_scale}: must be > 0"),
        (
            cfg.style_size is None or cfg.style_scale == 1.0,
            f"style_size={cfg.style_size} and style_scale={cfg.style_scale} both set: "
            "use one (style_size is absolute, style_scale relative to each stage)",
        ),
        (cfg.optim.tolerance >= 0, f"optim.tolerance={cfg.optim.tolerance}: must be >= 0"),
        (cfg.optim.window >= 1, f"optim.window={cfg.optim.window}: must be >= 1"),
        *perceptual_checks(cfg, len(styles)),
    ]


def perceptual_checks(cfg: Config, style_count: int) -> list[tuple[bool, str]]:
    """Checks of the colour mode, the style statistic and the styles' masks."""
    masks = mask_sources(cfg.pair.style_masks)
    source_masks = mask_sources(cfg.pair.style_source_masks)
    return [
        (
            cfg.color.name in COLOR_MODES,
            f"color={cfg.color.name}: use one of {', '.join(COLOR_MODES)}",
        ),
        (
            cfg.color.histogram_method in HISTOGRAM_METHODS,
            f"color.histogram_method={cfg.color.histogram_method}: use cholesky or eigen",
        ),
        (
            masks is None or len(masks) == style_count,
            f"pair.style_masks has {len(masks or [])} masks for {style_count} styles: give one each",
        ),
        (
            masks is None or None not in masks,
            f"pair.style_masks={masks}: every style needs a mask (null is not one): use mask:all "
            "for a style that applies everywhere",
        ),
        (
            source_masks is None or len(source_masks) == style_count,
            f"pair.style_source_masks has {len(source_masks or [])} masks for {style_count} "
            "styles: give one each (null for the whole style)",
        ),
    ]
