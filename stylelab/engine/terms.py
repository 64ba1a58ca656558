"""The kinds of term an objective is made of: each reads one VGG layer (or the image), has a weight
and builds its target once per stage. A new kind is one class here, added to `TERM_KINDS`.

A term's `forward(features, image)` returns its weighted value; `features` maps layer index to
the synthesis's feature maps. `set_target(targets)` receives the features of the content image
and of every style image at the current stage size, with the styles' blend weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stylelab.engine.features import layer_name
from stylelab.engine.losses import ContentLoss, StyleLoss, TVLoss, gram_matrix

Features = dict[int, torch.Tensor]


@dataclass
class Targets:
    """What terms build their targets from, at one stage's size."""

    content: Features
    styles: list[Features]
    blend: list[float]  # one weight per style, summing to 1


class Term(nn.Module):
    """A weighted loss on one VGG layer (`layer`) or on the image itself (`layer=None`)."""

    kind = "term"

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


class ContentTerm(Term):
    """Feature MSE against the content image at `layer`."""

    kind = "content"

    def set_target(self, targets: Targets) -> None:
        self.loss = ContentLoss(targets.content[self.layer])

    def forward(self, features: Features, image: torch.Tensor) -> torch.Tensor:
        return self.weight * self.loss(features[self.layer])


class StyleTerm(Term):
    """Gram-matrix MSE at `layer` against the blend-weighted sum of the styles' Gram matrices."""

    kind = "style"

    def set_target(self, targets: Targets) -> None:
        grams = [gram_matrix(style[self.layer]) for style in targets.styles]
        if len(grams) == 1:
            target = grams[0]
        else:
            target = sum(w * g for w, g in zip(targets.blend, grams, strict=True))
        self.loss = StyleLoss(target_gram=target)

    def forward(self, features: Features, image: torch.Tensor) -> torch.Tensor:
        return self.weight * self.loss(features[self.layer])


class TVTerm(Term):
    """Total variation of the image (`l1` or `l2`); computed only when its weight is non-zero."""

    kind = "tv"

    def __init__(self, weight: float, layer: int | None = None, norm: str = "l1"):
        super().__init__(weight, None)
        self.loss = TVLoss(norm)

    def forward(self, features: Features, image: torch.Tensor) -> torch.Tensor:
        if not self.weight:
            return image.new_zeros(())
        return self.weight * self.loss(image.float())


TERM_KINDS: dict[str, type[Term]] = {kind.kind: kind for kind in (ContentTerm, StyleTerm, TVTerm)}
