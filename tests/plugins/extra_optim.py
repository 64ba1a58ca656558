"""An optimiser from outside stylelab: one class, registered once (config: conf/optim/sign_sgd.yaml).

`sign_sgd` moves each pixel by `lr` against the sign of its momentum-averaged gradient; the
momentum carries over between stages (resized), and is the state a checkpoint keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from stylelab.engine.optimizers import PixelOptimizer, Placement, register_optimizer
from stylelab.engine.options import OptionError, check_positive


@dataclass(frozen=True)
class SignSGDOptions:
    lr: float = 0.01
    momentum: float = 0.0

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        if not 0 <= self.momentum < 1:
            raise OptionError("momentum", f"={self.momentum}: use a value in [0, 1)")


@register_optimizer
class SignSGD(PixelOptimizer):
    name = "sign_sgd"
    Options = SignSGDOptions

    def __init__(self, param: torch.Tensor, lr: float, momentum: float):
        self.param, self.lr, self.momentum = param, lr, momentum
        self.velocity = torch.zeros_like(param)

    @classmethod
    def build(cls, param: torch.Tensor, options: Any, placement: Placement) -> SignSGD:
        return cls(param, options.lr, options.momentum)

    @classmethod
    def memory_copies(cls, options: Any) -> float:
        return 4.0  # param, grad, velocity, one more

    @torch.no_grad()
    def step(self, grad: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        self.velocity.mul_(self.momentum).add_(grad.reshape(self.param.shape))
        self.param.add_(self.velocity.sign(), alpha=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity.copy_(state["velocity"])

    def carry_from(self, previous: PixelOptimizer) -> None:
        if isinstance(previous, SignSGD):
            size = tuple(self.param.shape[-2:])
            self.velocity.copy_(F.interpolate(previous.velocity, size=size, mode="bilinear"))
