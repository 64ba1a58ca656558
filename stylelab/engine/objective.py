"""An objective: a VGG encoder and a list of named, weighted terms.

`forward(image)` returns one scalar per term that reads a layer (`style/conv1_1`), one per kind
(`content`, `style`, `tv`: the sum of that kind's terms) and `total`. These names are what the
losses file, W&B and the report show; they come from the terms, never from a list elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from stylelab.engine.features import VGGFeatures
from stylelab.engine.options import OptionError
from stylelab.engine.statistics import StyleStatistic, normalise_weights
from stylelab.engine.terms import Targets, Term, build_terms


class Objective(nn.Module):
    """Weighted sum of terms over the outputs of one encoder; targets are set once per stage."""

    def __init__(self, encoder: VGGFeatures, terms: Sequence[Term]):
        super().__init__()
        if not terms:
            raise ValueError("an objective needs at least one term")
        self.encoder = encoder
        # An nn.ModuleList (it registers them), whose items torch types as plain Modules.
        self.terms = cast("Sequence[Term]", nn.ModuleList(terms))
        self.kinds: list[str] = list(dict.fromkeys(term.kind for term in terms))

    @property
    def names(self) -> list[str]:
        """Every key `forward` returns, in order: per-layer terms, kinds, `total`."""
        layered = [term.name for term in self.terms if term.layer is not None]
        return [*layered, *self.kinds, "total"]

    @torch.no_grad()
    def set_targets(
        self,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
        blend: Sequence[float] | None = None,
        masks: Sequence[torch.Tensor] | None = None,
        style_masks: Sequence[torch.Tensor | None] | None = None,
    ) -> None:
        """Build every term's target from the content and style images of one stage (and the
        styles' masks: synthesis frame, and optionally each style's own frame; see StyleTerm)."""
        blend = normalised_blend(blend, len(styles))
        for given, what in ((masks, "masks"), (style_masks, "style masks")):
            if given is not None and len(given) != len(styles):
                raise ValueError(f"{len(given)} {what} given for {len(styles)} style images")
        targets = Targets(
            self.encoder(content),
            [self.encoder(s) for s in styles],
            blend,
            None if masks is None else list(masks),
            None if style_masks is None else list(style_masks),
        )
        for term in self.terms:
            term.set_target(targets)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.evaluate(self.encoder(image), image)

    def evaluate(
        self, features: dict[int, torch.Tensor], image: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The terms from `features` of `image` computed elsewhere (e.g. by a batched encoder;
        layers this objective does not read are ignored)."""
        values: dict[str, torch.Tensor] = {}
        sums: dict[str, torch.Tensor] = {}
        for term in self.terms:
            value = term(features, image)
            if term.layer is not None:
                values[term.name] = value
            sums[term.kind] = value if term.kind not in sums else sums[term.kind] + value
        total = sums[self.kinds[0]]
        for kind in self.kinds[1:]:
            total = total + sums[kind]
        return {**values, **sums, "total": total}


def normalised_blend(blend: Sequence[float] | None, count: int) -> list[float]:
    """Blend weights for `count` styles, summing to 1 (default: equal)."""
    if not blend:
        return [1.0 / count] * count if count > 1 else [1.0]
    if len(blend) != count:
        raise OptionError(
            "blend",
            f" has {len(blend)} weights for {count} styles ({len(blend)} blend weights given "
            f"for {count} style images): give one each",
        )
    try:
        return normalise_weights(blend)
    except ValueError:
        raise OptionError(
            "blend", f"={list(blend)}: weights must be finite, >= 0 and not all 0"
        ) from None


def gatys_terms(
    content_layers: Sequence[int],
    style_layers: Sequence[int],
    content_weight: float = 1.0,
    style_weight: float = 1e6,
    tv_weight: float = 0.0,
    content_layer_weights: Sequence[float] | None = None,
    style_layer_weights: Sequence[float] | None = None,
    tv_loss: str = "l1",
    statistic: StyleStatistic | None = None,
) -> list[Term]:
    """The write-up's terms (a shorthand for tests and benchmarks; the runner builds terms from
    config nodes): content MSE and style loss per layer (global x per-layer weight), TV. The
    style terms use `statistic` (default: Gram matrices, as the write-up)."""
    return [
        *build_terms("content", content_weight, content_layers, content_layer_weights),
        *build_terms("style", style_weight, style_layers, style_layer_weights, statistic=statistic),
        *build_terms("tv", tv_weight, norm=tv_loss),
    ]


def encoder_layers(terms: Sequence[Term]) -> list[int]:
    """The VGG layers `terms` read, shallowest first: what their encoder must return."""
    return sorted({term.layer for term in terms if term.layer is not None})


def gatys_objective(
    encoder: VGGFeatures,
    content_image: torch.Tensor,
    style_images: torch.Tensor | Sequence[torch.Tensor],
    content_layers: Sequence[int],
    style_layers: Sequence[int],
    blend: Sequence[float] | None = None,
    **weights: Any,
) -> Objective:
    """`gatys_terms(...)` over `encoder`, with targets from the given images (one or more styles)."""
    styles = [style_images] if isinstance(style_images, torch.Tensor) else list(style_images)
    objective = Objective(encoder, gatys_terms(content_layers, style_layers, **weights))
    objective.set_targets(content_image, styles, blend)
    return objective
