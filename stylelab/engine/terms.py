"""The kinds of term an objective is made of: each reads one VGG layer (or the image), has a weight
and builds its target once per stage. A new kind is one `Term` subclass registered once with
`@register_term` (here or in any module); `build_terms(kind, **node)` makes its terms from its
config node (`weight`, `layers`, `layer_weights` and the class's own options), checking them.

A term's `forward(features, image)` returns its weighted value; `features` maps layer index to
the synthesis's feature maps. `set_target(targets)` receives the features of the content image
and of every style image at the current stage size, with the styles' blend weights and, for
spatial control, one mask per style in the synthesis frame and optionally one in the style's.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from stylelab.engine.features import layer_name, parse_layers
from stylelab.engine.losses import ContentLoss, TVLoss
from stylelab.engine.masks import propagate_mask
from stylelab.engine.options import OptionError, check_weight
from stylelab.engine.statistics import (
    GramStatistic,
    StyleStatistic,
    blended_style_loss,
    style_statistic,
)
from stylelab.errors import LayerError

Features = dict[int, torch.Tensor]


@dataclass
class Targets:
    """What terms build their targets from, at one stage's size."""

    content: Features
    styles: list[Features]
    blend: list[float]  # one weight per style, summing to 1
    masks: list[torch.Tensor] | None = None  # per style, (1, 1, H, W) in the synthesis frame
    style_masks: list[torch.Tensor | None] | None = None  # per style, in that style's frame


TERM_KINDS: dict[str, type[Term]] = {}


def register_term(kind: type[Term]) -> type[Term]:
    """Class decorator: make `kind` available to config nodes as `kind: <kind.kind>`."""
    TERM_KINDS[kind.kind] = kind
    return kind


class Term(nn.Module):
    """A weighted loss on one VGG layer (`layer`) or on the image itself (`layer=None`).

    `layered` kinds get one term per layer of their node's `layers`; others one term on the
    image. Options of `__init__` beyond `weight` and `layer` are the kind's own config options.
    """

    kind: ClassVar[str] = "term"
    layered: ClassVar[bool] = True

    def __init__(self, weight: float, layer: int | None = None):
        super().__init__()
        self.weight, self.layer = float(weight), layer

    @property
    def name(self) -> str:
        """`<kind>/<layer name>` (e.g. `style/conv1_1`), or the kind for image-space terms."""
        return self.kind if self.layer is None else f"{self.kind}/{layer_name(self.layer)}"

    def set_target(self, targets: Targets) -> None:
        """Build the target for the current stage (default: none needed)."""

    def forward(self, features: Features, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_term
class ContentTerm(Term):
    """Feature MSE against the content image at `layer`."""

    kind = "content"
    layer: int  # always a VGG layer

    def set_target(self, targets: Targets) -> None:
        self.loss = ContentLoss(targets.content[self.layer])

    def forward(self, features: Features, image: torch.Tensor) -> torch.Tensor:
        return self.weight * self.loss(features[self.layer])


@register_term
class StyleTerm(Term):
    """A style statistic's loss at `layer` (Gram MSE by default, or W2; see `statistics`).

    Without masks: one loss against the blend of the styles' statistics. With masks (one per
    style, synthesis frame): one guided loss per style inside its own region, summed, each
    scaled by `count * blend` (so 1 for the default equal blend); pixels no mask covers get no
    style loss. Masks are propagated to the layer's resolution once per stage; a region that
    is empty at this layer is skipped, a mask that covers all of it is dropped.
    """

    kind = "style"
    layer: int  # always a VGG layer

    def __init__(
        self,
        weight: float,
        layer: int | None = None,
        statistic: StyleStatistic | str | None = None,
    ):
        super().__init__(weight, layer)
        if isinstance(statistic, str):
            try:
                statistic = style_statistic(statistic)
            except ValueError as error:
                raise OptionError("statistic", f"={statistic}: {error}") from None
        self.statistic: StyleStatistic = statistic if statistic is not None else GramStatistic()

    def set_target(self, targets: Targets) -> None:
        features = [style[self.layer] for style in targets.styles]
        given = targets.style_masks
        style_masks = None if given is None else self._at_layer(given)
        if targets.masks is None:
            loss = blended_style_loss(self.statistic, features, targets.blend, style_masks)
            self.losses, self.region_weights = nn.ModuleList([loss]), [1.0]
            return
        masks = self._at_layer(targets.masks)
        style_masks = style_masks or [None] * len(features)
        self.losses, self.region_weights = nn.ModuleList(), []
        for index, (mask, style_mask) in enumerate(zip(masks, style_masks, strict=True)):
            if _selects(mask) and _selects(style_mask):
                target = self.statistic.measure(features[index], style_mask)
                self.losses.append(self.statistic.loss(target, mask))
                self.region_weights.append(len(features) * targets.blend[index])

    def _at_layer(self, masks: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """The masks at this layer's resolution; one that selects everything becomes None (no
        mask), so an all-ones mask computes exactly what no mask does, gradients included."""
        layer_masks = [None if m is None else propagate_mask(m, self.layer) for m in masks]
        return [None if m is None or bool((m == 1).all()) else m for m in layer_masks]

    def forward(self, features: Features, image: torch.Tensor) -> torch.Tensor:
        layer_features = features[self.layer]
        values = [
            w * loss(layer_features)
            for loss, w in zip(self.losses, self.region_weights, strict=True)
        ]
        if not values:  # every region is empty at this layer
            return image.new_zeros((), dtype=torch.float32)
        return self.weight * sum(values[1:], values[0])


def _selects(mask: torch.Tensor | None) -> bool:
    """A mask selects something at this layer (no mask selects everything); target-building
    time only: reading the sum back synchronises."""
    return mask is None or bool(mask.sum() > 0)


@register_term
class TVTerm(Term):
    """Total variation of the image (`l1` or `l2`); computed only when its weight is non-zero."""

    kind = "tv"
    layered = False

    def __init__(self, weight: float, layer: int | None = None, norm: str = "l1"):
        super().__init__(weight, None)
        try:
            self.loss = TVLoss(norm)
        except ValueError as error:
            raise OptionError("norm", f"={norm}: {error}") from None

    def forward(self, features: Features, image: torch.Tensor) -> torch.Tensor:
        if not self.weight:
            return image.new_zeros(())
        return self.weight * self.loss(image.float())


def build_terms(
    kind: str,
    weight: float = 1.0,
    layers: Sequence[int | str] | None = None,
    layer_weights: Sequence[float] | None = None,
    **options: Any,
) -> list[Term]:
    """The terms of the registered `kind` from its config node: one per layer of `layers`
    (weight x its layer weight; default 1 each) for a layered kind, else one on the image."""
    if kind not in TERM_KINDS:
        raise OptionError("kind", f"={kind}: unknown term kind: use one of {', '.join(TERM_KINDS)}")
    cls = TERM_KINDS[kind]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "weight", "layer"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise OptionError(unknown[0], f": term kind {kind} has no option {unknown[0]}")
    check_weight("weight", weight)
    if not cls.layered:
        return [cls(weight, **options)]
    try:
        parsed = parse_layers(layers or [])
    except LayerError as error:
        raise OptionError("layers", f": {error}") from None
    per_layer = layer_weights_of(layer_weights, parsed, kind)
    return [cls(weight * w, layer, **options) for layer, w in zip(parsed, per_layer, strict=True)]


def layer_weights_of(
    weights: Sequence[float] | None, layers: Sequence[int], kind: str
) -> list[float]:
    """One weight per layer: the given ones (>= 0, finite), or 1 each."""
    if weights is None or len(weights) == 0:
        return [1.0] * len(layers)
    if len(weights) != len(layers):
        raise OptionError(
            "layer_weights",
            f" has {len(weights)} value(s) for {len(layers)} layer(s) ({len(weights)} {kind} "
            f"layer weights given for {len(layers)} {kind} layers): give one weight per layer",
        )
    bad = next((w for w in weights if not (math.isfinite(w) and w >= 0)), None)
    if bad is not None:
        raise OptionError(
            "layer_weights",
            f"={list(weights)}: every weight must be >= 0 and finite (got {bad}); set a layer's "
            "weight to 0 to switch it off",
        )
    return [float(w) for w in weights]
