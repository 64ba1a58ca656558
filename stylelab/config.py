"""The configuration schema: plain dataclasses (Hydra registers them; the engine never imports Hydra).

Top-level keys are the knobs researchers sweep; groups mirror the engine's concepts:
`pair` (images), `layers` (which VGG outputs), `optim`, `model` (VGG weights), `logger` (tracking).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from stylelab.engine.synthesis import INITS
from stylelab.errors import StyleLabError


@dataclass
class PairConfig:
    """A content/style pair; each source is a path, `skimage:<name>` or an http(s) URL[#sha256=...]."""

    name: str = MISSING
    content: str = MISSING
    style: str = MISSING


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
    line_search: str = "none"  # none | armijo (L-BFGS only; each step is still one evaluation)


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


@dataclass
class LogConfig:
    image_every: int = 25  # steps between intermediate frames (PNG, GIF frame, W&B image)
    flush_every: int = 10  # steps between reading losses back from the device
    gif_seconds_per_frame: float = 0.1
    checkpoint_every: int = (
        0  # steps between full checkpoints (0: only on interruption); L-BFGS state is large
    )


@dataclass
class Config:
    pair: PairConfig = field(default_factory=PairConfig)
    layers: LayersConfig = field(default_factory=LayersConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    log: LogConfig = field(default_factory=LogConfig)

    content_weight: float = 1.0
    style_weight: float = 1e6
    tv_weight: float = 10.0  # d2l's value, which the write-up followed
    steps: int = 300
    image_size: int = 512
    style_size: int | None = None  # default: image_size
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16
    init: str = "content"  # content | noise | style | image
    init_image: str | None = None  # source for init=image
    resume: str | None = None  # a run folder to continue from its checkpoint
    cache_dir: str | None = None  # downloaded images (default ~/.cache/stylelab)
    debug: bool = False  # show tracebacks for errors


def validate(cfg: Config) -> None:
    """Reject values that would fail later, with one line saying what to change."""
    checks = [
        (cfg.steps >= 1, f"steps={cfg.steps}: must be at least 1"),
        (cfg.image_size >= 1, f"image_size={cfg.image_size}: must be a positive number of pixels"),
        (
            cfg.style_size is None or cfg.style_size >= 1,
            f"style_size={cfg.style_size}: must be positive",
        ),
        (cfg.content_weight >= 0, f"content_weight={cfg.content_weight}: must be >= 0"),
        (cfg.style_weight >= 0, f"style_weight={cfg.style_weight}: must be >= 0"),
        (cfg.tv_weight >= 0, f"tv_weight={cfg.tv_weight}: must be >= 0"),
        (cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr}: must be > 0"),
        (cfg.optim.name in ("lbfgs", "adam"), f"optim.name={cfg.optim.name}: use lbfgs or adam"),
        (cfg.optim.history_size >= 1, f"optim.history_size={cfg.optim.history_size}: must be >= 1"),
        (
            cfg.optim.line_search in ("none", "armijo"),
            f"optim.line_search={cfg.optim.line_search}: use none or armijo",
        ),
        (
            cfg.optim.line_search == "none" or cfg.optim.name == "lbfgs",
            f"optim.line_search={cfg.optim.line_search} is for optim=lbfgs only",
        ),
        (cfg.init in INITS, f"init={cfg.init}: use one of {', '.join(INITS)}"),
        (cfg.init != "image" or bool(cfg.init_image), "init=image needs init_image=<path or URL>"),
        (
            cfg.precision in ("auto", "fp32", "bf16"),
            f"precision={cfg.precision}: use auto, fp32 or bf16",
        ),
        (cfg.log.image_every >= 1, f"log.image_every={cfg.log.image_every}: must be >= 1"),
        (cfg.log.flush_every >= 1, f"log.flush_every={cfg.log.flush_every}: must be >= 1"),
        (
            cfg.log.checkpoint_every >= 0,
            f"log.checkpoint_every={cfg.log.checkpoint_every}: must be >= 0",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise StyleLabError(message)
