"""A fixed evaluation protocol: one scale for every run, whatever its objective.

`Evaluator` measures an image against a content image and a style target with the same layers,
statistics and colour space for every run (only the VGG weights are the run's), so two runs of
different layers, loss weights, statistics, colour modes or schedules on one pair compare:

- `eval/content`: ||F(x) - F(c)|| / ||F(c)|| at relu4_2;
- `eval/style`: the mean over relu1_1 ... relu5_1 of ||G(x) - G(s)|| / ||G(s)||, the relative
  Gram distance to the style target (several styles: the blend of their Gram matrices, as the
  run blends them; masks: one distance per style region, weighted by the region's area);
- `eval/ssim`: structural similarity of the image's luminance to the content's;
- `eval/color`: sliced Wasserstein-2 distance between the image's and the style's pixel
  colours in CIE Lab, over fixed, seeded projections (`color_distance`; several styles: the
  blend's pixels, each style weighted by its blend weight; masks: per region, weighted by area).

The arithmetic is float64 (images are 8-bit, so nothing is lost): float64 never takes the
fast paths whose rounding depends on global switches (TF32, oneDNN, cuDNN autotuning) that
the jobs of a batch running in other threads flip, so the same image and inputs give the same
numbers on one device, alone or beside a batch, and agree across devices to ~1e-12.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import nn

from stylelab.engine.color import luminance
from stylelab.engine.color_distance import (
    color_quantiles,
    lab_pixels,
    sliced_wasserstein,
)
from stylelab.engine.features import LAYER_INDEX, VGGFeatures
from stylelab.engine.masks import propagate_mask
from stylelab.engine.objective import normalised_blend
from stylelab.engine.statistics import GramStatistic
from stylelab.errors import ImageError

EVAL_PROTOCOL = "stylelab-eval-1"
CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
METRICS = ("eval/content", "eval/style", "eval/ssim", "eval/color")
MIN_SIDE = 16  # relu5_1 lies after four 2x2 pools

Mask = torch.Tensor | None


@contextlib.contextmanager
def exact() -> Iterator[None]:
    """No gradients, no autocast (both thread-local): the protocol's arithmetic is float64."""
    with (
        torch.no_grad(),
        torch.autocast("cpu", enabled=False),
        torch.autocast("cuda", enabled=False),
    ):
        yield


def float64_copy(features: nn.Sequential) -> nn.Sequential:
    """A copy of `features` whose parameters are float64 copies of its own, made directly (a
    deep copy and then a conversion copied VGG-19's 80 MB of weights twice: 107 ms of CPU on
    one core here, against 20 ms; every run builds an evaluator)."""
    memo: dict[int, Any] = {
        id(parameter): nn.Parameter(parameter.detach().to(torch.float64), requires_grad=False)
        for parameter in features.parameters()
    }
    return copy.deepcopy(features, memo)


class Evaluator:
    """The protocol against fixed inputs: `evaluator(image)` -> {metric name: float}.

    `content` (1, 3, H, W) in [0, 1] sets the evaluation size: images of another size are
    resized to it. `styles` are the style images (any size), `blend` their weights (default
    equal), `masks` one (1, 1, H, W) mask per style in the content's frame, `style_masks` one
    mask (or None) per style in that style's frame. `features` is the VGG-19 `features` whose
    weights to use (max pooling, whatever the run's).
    """

    def __init__(
        self,
        features: nn.Sequential,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
        blend: Sequence[float] | None = None,
        masks: Sequence[torch.Tensor] | None = None,
        style_masks: Sequence[Mask] | None = None,
    ):
        for what, image in (("content", content), *(("style", s) for s in styles)):
            if min(image.shape[-2:]) < MIN_SIDE:
                raise ImageError(
                    f"evaluation: the {what} image is {image.shape[-1]}x{image.shape[-2]} px; the "
                    f"protocol needs at least {MIN_SIDE} px on the shorter side (raise image_size)"
                )
        self.device = content.device
        self.style_layers = [LAYER_INDEX[name] for name in STYLE_LAYERS]
        self.content_layer = LAYER_INDEX[CONTENT_LAYER]
        layers = [*self.style_layers, self.content_layer]
        # A float64 copy: the run's encoder shares (and keeps using) the fp32 weights.
        self.encoder: VGGFeatures = VGGFeatures(float64_copy(features), layers, "max").to(  # type: ignore[call-overload]  # Module.to takes memory_format=; its stubs omit it
            self.device, torch.float64, memory_format=torch.contiguous_format
        )
        self.content = content.double()
        self.blend = normalised_blend(blend, len(styles))
        self.masks = None if masks is None else [m.double() for m in masks]
        self.style_masks = list(style_masks) if style_masks is not None else [None] * len(styles)
        with exact():
            content_features = self.encoder(self.content)
            style_features = [self.encoder(s.double()) for s in styles]
        self.content_target = content_features[self.content_layer]
        self.style_targets = {
            layer: [
                GramStatistic().measure(f[layer], _at_layer(m, layer))
                for f, m in zip(style_features, self.style_masks, strict=True)
            ]
            for layer in self.style_layers
        }
        self.content_luma = _luma(self.content)
        self.color_targets = self._color_targets([lab_pixels(s) for s in styles])

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.content.shape[-2]), int(self.content.shape[-1])

    def __call__(self, image: torch.Tensor) -> dict[str, float]:
        """The metrics of `image` (1, 3, h, w) in [0, 1], resized to the evaluation size."""
        image = image.to(self.device, torch.float64)
        if tuple(image.shape[-2:]) != self.size_hw:
            image = torch.nn.functional.interpolate(
                image, size=self.size_hw, mode="bilinear", align_corners=False, antialias=True
            ).clamp(0, 1)
        with exact():
            features = self.encoder(image)
            content = _relative(features[self.content_layer], self.content_target)
            style = float(
                np.mean([self._style_distance(features, layer) for layer in self.style_layers])
            )
        ssim = structural_similarity(_luma(image), self.content_luma, data_range=1.0)
        return {
            "eval/content": content,
            "eval/style": style,
            "eval/ssim": float(ssim),
            "eval/color": self._color_distance(image),
        }

    def _regions(self, layer: int | None) -> list[tuple[int, Mask, float]]:
        """(style index, mask at `layer` or None, weight) of each style region; without masks
        one region (index -1: the blend). `layer=None`: the content frame."""
        if self.masks is None:
            return [(-1, None, 1.0)]
        regions: list[tuple[int, Mask, float]] = []
        for index, mask in enumerate(self.masks):
            at_layer = mask if layer is None else propagate_mask(mask, layer)
            area = float(at_layer.sum())
            if area > 0:
                regions.append((index, at_layer, area))
        return regions

    def _style_distance(self, features: dict[int, torch.Tensor], layer: int) -> float:
        gram = GramStatistic()
        targets = self.style_targets[layer]
        distances, weights = [], []
        for index, mask, weight in self._regions(layer):
            target = gram.blend(targets, self.blend) if index < 0 else targets[index]
            distances.append(_relative(gram.measure(features[layer], mask), target))
            weights.append(weight)
        return _weighted_mean(distances, weights)

    def _color_targets(self, styles: list[np.ndarray]) -> dict[int, np.ndarray]:
        """The styles' colour quantiles per region: the blend (-1), or each masked style."""
        weights = [_style_weights(lab, m) for lab, m in zip(styles, self.style_masks, strict=True)]
        if self.masks is None:
            mixture = [b * w / w.sum() for b, w in zip(self.blend, weights, strict=True)]
            return {-1: color_quantiles(np.concatenate(styles), np.concatenate(mixture))}
        return {
            i: color_quantiles(lab, w)
            for i, (lab, w) in enumerate(zip(styles, weights, strict=True))
        }

    def _color_distance(self, image: torch.Tensor) -> float:
        pixels = lab_pixels(image)
        distances, weights = [], []
        for index, mask, weight in self._regions(None):
            own = color_quantiles(pixels, None if mask is None else _flat(mask))
            distances.append(sliced_wasserstein(own, self.color_targets[index]))
            weights.append(weight)
        return _weighted_mean(distances, weights)


def _relative(value: torch.Tensor, target: torch.Tensor) -> float:
    norm = torch.linalg.vector_norm(target.double())
    difference = torch.linalg.vector_norm((value - target).double())
    return float(difference / norm.clamp_min(torch.finfo(torch.float64).tiny))


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    if not values:  # every region empty at this layer
        return 0.0
    return float(np.dot(values, weights) / np.sum(weights))


def _at_layer(mask: Mask, layer: int) -> Mask:
    return None if mask is None else propagate_mask(mask.double(), layer)


def _flat(mask: torch.Tensor) -> np.ndarray:
    return mask.detach().double().cpu().numpy().reshape(-1)


def _style_weights(lab: np.ndarray, mask: Mask) -> np.ndarray:
    return np.ones(lab.shape[0]) if mask is None else _flat(mask)


def _luma(image: torch.Tensor) -> np.ndarray:
    return luminance(image.double())[0, 0].cpu().numpy().clip(0, 1)
