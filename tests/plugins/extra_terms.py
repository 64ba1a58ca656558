"""A loss term from outside stylelab: one class, registered once (config: conf/terms/channel_mean.yaml).

`channel_mean` matches the per-channel mean of the synthesis's features at each of its layers
to the first style's, `|difference|**power` averaged over the channels.
"""

from __future__ import annotations

import torch

from stylelab.engine.options import OptionError
from stylelab.engine.terms import Features, Targets, Term, register_term


@register_term
class ChannelMeanTerm(Term):
    kind = "channel_mean"

    def __init__(self, weight: float, layer: int | None = None, power: float = 2.0):
        super().__init__(weight, layer)
        if not power > 0:
            raise OptionError("power", f"={power}: must be > 0")
        self.power = float(power)

    def set_target(self, targets: Targets) -> None:
        self.target = targets.styles[0][self.layer].float().mean(dim=(-2, -1))

    def forward(self, features: Features, image: torch.Tensor) -> torch.Tensor:
        mean = features[self.layer].float().mean(dim=(-2, -1))
        return self.weight * (mean - self.target).abs().pow(self.power).mean()
