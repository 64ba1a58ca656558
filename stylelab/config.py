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
from stylelab.engine.features import parse_layers
from stylelab.engine.images import DEFAULT_MAX_PIXELS
from stylelab.engine.losses import TV_KINDS
from stylelab.engine.optim import LINE_SEARCHES, resolve_line_search
from stylelab.engine.schedule import SCHEDULES, pyramid_sizes
from stylelab.engine.statistics import STYLE_STATISTICS
from stylelab.engine.synthesis import INITS, KEEPS
from stylelab.errors import LayerError, StyleLabError
from stylelab.tracking.wandb_artifacts import ARTIFACT_KINDS
from stylelab.tracking.wandb_tracker import MODES, PROJECT_BAD_CHARS, PROJECT_MAX_LEN

MAX_IMAGE_SIZE = 16384  # VGG-19 at this size needs ~400 GiB; larger is always a typo
LOGGER_NAMES = ("wandb", "none")
WANDB_TAG_MAX = 64


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
    name: str = "lbfgs"  # lbfgs | adam
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
    # what a run returns to a sweeper: a summary key, or a list of them for a multi-objective
    # sweeper (hparams_search=pareto: [eval/content, eval/style]); a failed run returns inf each
    sweep_returns: Any = "final/total"


def validate(cfg: Config) -> None:
    """Reject values that would fail later, with one line saying what to change."""
    for ok, message in (
        *_setting_checks(cfg),
        *_weight_checks(cfg),
        *_logger_checks(cfg),
        *_schedule_checks(cfg),
        *synthesis_checks(cfg),
    ):
        if not ok:
            raise StyleLabError(message)
    for kind in ("style", "content"):
        _check_layers(cfg.layers, kind)


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
    yield cfg.optim.name in ("lbfgs", "adam"), f"optim.name={cfg.optim.name}: use lbfgs or adam"
    yield (
        cfg.optim.history_size >= 1,
        f"optim.history_size={cfg.optim.history_size}: must be >= 1",
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


def _weight_checks(cfg: Config) -> Iterator[tuple[bool, str]]:
    for key in ("content_weight", "style_weight", "tv_weight"):
        value = getattr(cfg, key)
        yield _finite_at_least(value, 0), f"{key}={value}: must be >= 0 and finite"
    yield (
        _finite_at_least(cfg.optim.lr, 0, strict=True),
        f"optim.lr={cfg.optim.lr}: must be > 0 and finite",
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


def _logger_checks(cfg: Config) -> Iterator[tuple[bool, str]]:
    logger = cfg.logger
    yield logger.name in LOGGER_NAMES, f"logger={logger.name}: use {' or '.join(LOGGER_NAMES)}"
    if logger.name != "wandb":
        return
    yield (
        logger.mode in MODES,
        f"logger.mode={logger.mode}: use one of {', '.join(MODES)}",
    )
    unknown = [kind for kind in logger.artifacts if kind not in ARTIFACT_KINDS]
    yield (
        not unknown,
        f"logger.artifacts={list(logger.artifacts)}: {', '.join(map(str, unknown))} is not an "
        f"artifact kind; use a list of {', '.join(ARTIFACT_KINDS)} ([] for none)",
    )
    project = logger.project or ""
    bad = sorted({char for char in project if char in PROJECT_BAD_CHARS})
    yield (
        0 < len(project) <= PROJECT_MAX_LEN and not bad,
        f"logger.project={project[:40]}{'...' if len(project) > 40 else ''}: W&B needs 1 to "
        f"{PROJECT_MAX_LEN} characters (this has {len(project)}) and none of "
        f"{' '.join(PROJECT_BAD_CHARS)}" + (f" (found {' '.join(bad)})" if bad else ""),
    )
    for tag in (cfg.pair.name, cfg.layers.name, cfg.optim.name, *logger.tags):
        yield (
            len(str(tag)) <= WANDB_TAG_MAX,
            f"W&B tag {str(tag)[:40]}... (from logger.tags or a pair, layers or optim name): "
            f"W&B tags have at most {WANDB_TAG_MAX} characters",
        )


def _check_layers(layers: LayersConfig, kind: str) -> None:
    """The layers of `kind` parse, and their per-layer weights match them one to one."""
    try:
        parsed = parse_layers(getattr(layers, kind))
    except LayerError as error:
        raise LayerError(f"layers.{kind}: {error}") from None
    weights = getattr(layers, f"{kind}_weights")
    if weights is None:
        return
    if len(weights) != len(parsed):
        raise StyleLabError(
            f"layers.{kind}_weights has {len(weights)} value(s) for {len(parsed)} layer(s) in "
            f"layers.{kind}={list(getattr(layers, kind))}: give one weight per layer"
        )
    bad = next((weight for weight in weights if not _finite_at_least(weight, 0)), None)
    if bad is not None:
        raise StyleLabError(
            f"layers.{kind}_weights={list(weights)}: every weight must be >= 0 and finite "
            f"(got {bad}); set a layer's weight to 0 to switch it off"
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
    styles, blend = style_sources(cfg), cfg.pair.style_blend
    return [
        (bool(styles), "pair.style=[]: give at least one style image"),
        (
            not blend or len(blend) == len(styles),
            f"pair.style_blend has {len(blend or [])} weights for {len(styles)} styles: give one each",
        ),
        (
            not blend or (all(_finite_at_least(w, 0) for w in blend) and max(blend) > 0),
            f"pair.style_blend={list(blend or [])}: weights must be finite, >= 0 and not all 0",
        ),
        (cfg.style_scale > 0, f"style_scale={cfg.style_scale}: must be > 0"),
        (
            cfg.style_size is None or cfg.style_scale == 1.0,
            f"style_size={cfg.style_size} and style_scale={cfg.style_scale} both set: "
            "use one (style_size is absolute, style_scale relative to each stage)",
        ),
        (cfg.keep in KEEPS, f"keep={cfg.keep}: use last or best"),
        (cfg.tv_loss in TV_KINDS, f"tv_loss={cfg.tv_loss}: use l1 or l2"),
        (0 <= cfg.optim.ema < 1, f"optim.ema={cfg.optim.ema}: use 0 (off) or a decay in (0, 1)"),
        (cfg.optim.tolerance >= 0, f"optim.tolerance={cfg.optim.tolerance}: must be >= 0"),
        (
            cfg.optim.line_search in LINE_SEARCHES,
            f"optim.line_search={cfg.optim.line_search}: use auto, none or armijo",
        ),
        (
            resolve_line_search(cfg.optim.name, cfg.optim.line_search) == "none"
            or cfg.optim.name == "lbfgs",
            f"optim.line_search={cfg.optim.line_search} is for optim=lbfgs only",
        ),
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
            cfg.style_loss in STYLE_STATISTICS,
            f"style_loss={cfg.style_loss}: use one of {', '.join(STYLE_STATISTICS)}",
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
