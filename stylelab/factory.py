"""Build the engine from a `Config`: the one place that wires images, VGG, objective, schedule
and optimiser settings, for the runner and the benchmarks alike."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from PIL import Image

from stylelab.components import optim_settings, terms_of
from stylelab.config import Config, mask_sources, style_sources
from stylelab.engine.color import finish_color, prepare_color_inputs
from stylelab.engine.device import resolve_device
from stylelab.engine.features import VGGFeatures, layer_name, load_vgg19_features
from stylelab.engine.images import (
    long_side_size,
    pil_to_tensor,
    resize_long_side,
    tensor_to_uint8,
)
from stylelab.engine.loop import LoopSettings, Prepare, Present, Synthesis
from stylelab.engine.masks import load_mask
from stylelab.engine.objective import Objective, encoder_layers
from stylelab.engine.schedule import Stage, make_schedule
from stylelab.engine.sources import load_source
from stylelab.engine.synthesis import default_precision, initial_image
from stylelab.errors import ImageError, StyleLabError

log = logging.getLogger(__name__)


class Shared:
    """What the jobs of one sweep share in one process: each VGG loaded once (per
    `model.weights`, and seed for random weights), each input image decoded once and resized
    once per size. A launcher that runs several jobs passes one to each of them
    (`stylelab.runner.Launch`); a job without one loads its own."""

    def __init__(self) -> None:
        self.vggs: dict[tuple, torch.nn.Sequential] = {}
        self.decoded: dict[tuple, Image.Image] = {}
        self.resized: dict[tuple[int, int], tuple[Image.Image, Image.Image]] = {}

    def vgg(self, cfg: Config) -> torch.nn.Sequential:
        key = vgg_key(cfg)[:2]
        if key not in self.vggs:
            self.vggs[key] = load_vgg19_features(cfg.model.weights, seed=cfg.seed)
        return self.vggs[key]

    def source(self, source: str, cfg: Config) -> Image.Image:
        """The image of `source` (a path, URL or `skimage:` name) as `load_source` gives it."""
        key = (source, str(cfg.cache_dir), cfg.max_input_pixels)
        if key not in self.decoded:
            self.decoded[key] = load_source(source, cfg.cache_dir, cfg.max_input_pixels)
        return self.decoded[key]

    def resize(self, image: Image.Image, side: int) -> Image.Image:
        """`resize_long_side(image, side)`, once per decoded image and side."""
        key = (id(image), side)  # the entry holds `image`: its id is not reused meanwhile
        if key not in self.resized:
            self.resized[key] = (image, resize_long_side(image, side))
        return self.resized[key][1]


_ambient: ContextVar[Shared | None] = ContextVar("stylelab_shared", default=None)


@contextmanager
def sharing_vgg() -> Iterator[Shared]:
    """For scripts and tests: syntheses built within this block without a `shared` of their
    own share one `Shared` (one VGG per weights, inputs decoded once). Launchers pass theirs."""
    token = _ambient.set(_ambient.get() or Shared())
    try:
        yield _ambient.get()  # type: ignore[misc]
    finally:
        _ambient.reset(token)


def shared_or_ambient(shared: Shared | None) -> Shared | None:
    return shared if shared is not None else _ambient.get()


@dataclass
class SourceImages:
    """The content and style images as loaded, before any resizing."""

    content: Image.Image
    styles: list[Image.Image]

    @classmethod
    def load(cls, cfg: Config, shared: Shared | None = None) -> SourceImages:
        shared = shared_or_ambient(shared)
        if shared is not None:
            load = partial(shared.source, cfg=cfg)
        else:
            load = partial(load_source, cache_dir=cfg.cache_dir, max_pixels=cfg.max_input_pixels)
        return cls(load(cfg.pair.content), [load(source) for source in style_sources(cfg)])


class StageImages:
    """Content and styles resized for a stage, on the device (cached per size; resized once
    per sweep with a `Shared`)."""

    def __init__(
        self,
        sources: SourceImages,
        cfg: Config,
        device: torch.device,
        shared: Shared | None = None,
    ):
        self.sources, self.device = sources, device
        self.style_size, self.style_scale = cfg.style_size, cfg.style_scale
        self.resize = shared.resize if shared is not None else resize_long_side
        self.cache: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def style_side(self, size: int) -> int:
        return self.style_size or max(1, round(self.style_scale * size))

    def sizes(self, size: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
        """(width, height) of the content and of each style at `size`, without resizing."""
        side = self.style_side(size)
        content = long_side_size(*self.sources.content.size, size)
        return content, [long_side_size(*style.size, side) for style in self.sources.styles]

    def __call__(self, size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if size not in self.cache:
            content = pil_to_tensor(self.resize(self.sources.content, size))
            side = self.style_side(size)
            styles = [pil_to_tensor(self.resize(s, side)) for s in self.sources.styles]
            self.cache = {size: (content.to(self.device), [s.to(self.device) for s in styles])}
        return self.cache[size]


Masks = list[torch.Tensor] | None
SourceMasks = list[torch.Tensor | None] | None


class StageMasks:
    """The styles' masks (`pair.style_masks`, `pair.style_source_masks`) at the sizes of a
    stage's content and styles, on the device (cached per size)."""

    def __init__(self, cfg: Config, device: torch.device):
        self.masks = mask_sources(cfg.pair.style_masks)
        self.source_masks = mask_sources(cfg.pair.style_source_masks)
        self.cache_dir, self.device = cfg.cache_dir, device
        self.cache: dict[tuple, tuple[Masks, SourceMasks]] = {}

    def load(self, source: str, image: torch.Tensor) -> torch.Tensor:
        return load_mask(source, (image.shape[-2], image.shape[-1]), self.cache_dir).to(self.device)

    def __call__(
        self, content: torch.Tensor, styles: list[torch.Tensor]
    ) -> tuple[Masks, SourceMasks]:
        key = (tuple(content.shape[-2:]), *(tuple(style.shape[-2:]) for style in styles))
        if key not in self.cache:
            # str(m): the config check leaves no null among the synthesis-frame masks
            masks = None if self.masks is None else [self.load(str(m), content) for m in self.masks]
            self.cache = {key: (masks, self.style_frame_masks(styles))}
        return self.cache[key]

    def style_frame_masks(self, styles: list[torch.Tensor]) -> SourceMasks:
        if self.source_masks is None:
            return None
        masks = []
        for number, (source, style) in enumerate(zip(self.source_masks, styles, strict=True), 1):
            mask = None if source is None else self.load(source, style)
            if mask is not None and not bool(mask.sum() > 0):
                raise ImageError(
                    f"pair.style_source_masks: {source} selects no pixel of style {number}: "
                    "white marks the part of the style to measure"
                )
            masks.append(mask)
        return masks


def vgg_key(cfg: Config) -> tuple:
    """What identifies the VGG a config loads (jobs with equal keys can share one batch)."""
    return (
        cfg.model.weights,
        cfg.seed if cfg.model.weights == "random" else None,
        cfg.model.pooling,
    )


def load_vgg(cfg: Config, shared: Shared | None = None) -> torch.nn.Sequential:
    """The VGG-19 features of `cfg.model` (`shared`'s, or inside `sharing_vgg` the block's)."""
    shared = shared_or_ambient(shared)
    if shared is None:
        return load_vgg19_features(cfg.model.weights, seed=cfg.seed)
    return shared.vgg(cfg)


@dataclass
class Built:
    """A ready synthesis and what the runner reports about it."""

    synthesis: Synthesis
    device: torch.device
    precision: str
    images: StageImages
    vgg: torch.nn.Sequential  # the whole VGG-19 `features` (the evaluation reads deeper layers)

    def inputs(self) -> dict[str, np.ndarray]:
        """The inputs at the final size (uint8): `content` as given (whose colours `color=`
        luminance and original keep), `style`, `style_2`, ... as the objective sees them
        (colour-matched or grey with `color=`) and the styles' masks `mask`, `mask_2`, ..."""
        synthesis = self.synthesis
        content, styles = self.images(synthesis.stages[-1].size)
        prepared, styles = (
            synthesis.prepare(content, styles) if synthesis.prepare else (content, styles)
        )
        masks = synthesis.stage_masks(prepared, styles)[0] if synthesis.stage_masks else None
        grey = [tensor_to_uint8(mask.expand(-1, 3, -1, -1)) for mask in masks or []]
        return {
            "content": tensor_to_uint8(content),
            **dict(zip(numbered("style", len(styles)), map(tensor_to_uint8, styles), strict=True)),
            **dict(zip(numbered("mask", len(grey)), grey, strict=True)),
        }


def numbered(name: str, count: int) -> list[str]:
    """`name`, `name_2`, ... `name_<count>`."""
    return [name, *(f"{name}_{i}" for i in range(2, count + 1))][:count]


def build_synthesis(
    cfg: Config, sources: SourceImages | None = None, shared: Shared | None = None
) -> Built:
    """Everything a run needs from `cfg` (images from `sources` if given, else loaded); with
    `shared` (or inside `sharing_vgg`) the VGG and inputs are those of the sweep's other jobs."""
    shared = shared_or_ambient(shared)
    device = resolve_device(cfg.device)
    precision = cfg.precision if cfg.precision != "auto" else default_precision(device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    sources = sources or SourceImages.load(cfg, shared)
    terms = terms_of(cfg)
    vgg = load_vgg(cfg, shared)
    encoder = VGGFeatures(vgg, encoder_layers(terms), cfg.model.pooling)
    stages = schedule_of(cfg)
    images = StageImages(sources, cfg, device, shared)
    check_sizes(images, stages, encoder)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    objective = Objective(
        encoder.to(device, memory_format=memory_format),  # type: ignore[call-overload]  # stubs omit memory_format=
        terms,
    )
    synthesis = Synthesis(
        objective=objective,
        stage_images=images,
        start_image=start_image(cfg, device, shared),
        stages=stages,
        optim=optim_settings(cfg, precision),
        loop=LoopSettings(cfg.log.image_every, cfg.log.flush_every, cfg.log.checkpoint_every),
        blend=cfg.pair.style_blend,
        **perceptual_hooks(cfg, device),
    )
    return Built(synthesis, device, precision, images, vgg)


def perceptual_hooks(cfg: Config, device: torch.device) -> dict:
    """The synthesis's `prepare`, `present` and `stage_masks` for the colour mode and masks."""
    prepare, present = color_hooks(cfg)
    has_masks = cfg.pair.style_masks is not None or cfg.pair.style_source_masks is not None
    stage_masks = StageMasks(cfg, device) if has_masks else None
    return {"prepare": prepare, "present": present, "stage_masks": stage_masks}


def color_hooks(cfg: Config) -> tuple[Prepare | None, Present | None]:
    """`histogram` and `luminance` change the images the objective sees; `luminance` and
    `original` show the synthesised luminance with the content's colours."""
    mode, method = cfg.color.name, cfg.color.histogram_method
    prepare = None
    if mode in ("histogram", "luminance"):
        prepare = partial(prepare_color_inputs, mode=mode, method=method)
    present = partial(finish_color, mode=mode) if mode in ("luminance", "original") else None
    return prepare, present


def schedule_of(cfg: Config) -> list[Stage]:
    s = cfg.schedule
    try:
        return make_schedule(
            s.name, cfg.image_size, cfg.steps, s.min_size, s.factor, s.sizes, s.steps
        )
    except ValueError as error:
        raise StyleLabError(f"{error} (schedule={s.name})") from None


def start_image(cfg: Config, device: torch.device, shared: Shared | None = None):
    """The first stage's starting image, from `init` (and `init_image`)."""
    init_source = None
    if cfg.init == "image":
        source = cfg.init_image
        assert source is not None  # config.validate: init=image needs init_image
        image = (
            shared.source(source, cfg)
            if shared is not None
            else load_source(source, cfg.cache_dir, cfg.max_input_pixels)
        )
        init_source = pil_to_tensor(image).to(device)

    def start(content: torch.Tensor, styles: list[torch.Tensor]) -> torch.Tensor:
        return initial_image(cfg.init, content, styles[0], init_source, seed=cfg.seed)

    return start


def check_sizes(images: StageImages, stages: list[Stage], encoder: VGGFeatures) -> None:
    """Every stage's content and style images must be large enough for the deepest layer
    (checked on their sizes: nothing is resized yet)."""
    content, styles = images.sizes(stages[0].size)
    pyramid = len(stages) > 1
    check_size(content, encoder, "content", "schedule.min_size" if pyramid else "image_size")
    for style in styles:
        check_size(style, encoder, "style", "style_size or style_scale")


def check_size(size: tuple[int, int], encoder: VGGFeatures, what: str, size_key: str) -> None:
    """`size`: an image's (width, height)."""
    width, height = size
    if min(width, height) < encoder.min_size:
        deepest = layer_name(encoder.layers[-1])
        raise ImageError(
            f"the {what} image is {width}x{height} px, too small for layer {deepest}: "
            f"its shorter side must be at least {encoder.min_size} px (raise {size_key} or use shallower layers)"
        )
