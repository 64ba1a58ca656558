"""The optimisation loop: move the pixels of an image to minimise a `GatysLoss`."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from stylelab.losses import GatysLoss
from stylelab.optim import make_optimizer

INITS = ("content", "noise", "style", "image")


def initial_image(
    init: str,
    content: torch.Tensor,
    style: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Starting point of the synthesis: the content image, uniform noise, the style or a given image."""
    if init == "content":
        return content.clone()
    if init == "noise":
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return torch.rand(content.shape, generator=generator).to(content.device)
    if init in ("style", "image"):
        source = style if init == "style" else image
        if source is None:
            raise ValueError(f"init={init} needs an image")
        return torch.nn.functional.interpolate(
            source, size=content.shape[-2:], mode="bilinear", align_corners=False, antialias=True
        ).clamp(0, 1)
    raise ValueError(f"unknown init '{init}': use one of {', '.join(INITS)}")


class Synthesizer:
    """Holds the image being optimised and its optimiser; `step()` does one evaluation.

    `precision="bf16"` runs the VGG forward and backward under bfloat16 autocast on CUDA;
    Gram matrices and losses are always fp32.
    """

    def __init__(
        self,
        loss: GatysLoss,
        image: torch.Tensor,
        optimizer: str = "lbfgs",
        lr: float = 1.0,
        history_size: int = 100,
        precision: str = "fp32",
    ):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision '{precision}': use fp32 or bf16")
        self.loss = loss
        self.image = image.detach().clone().contiguous()
        self.optimizer = make_optimizer(optimizer, self.image, lr=lr, history_size=history_size)
        self.precision = precision
        self.step_count = 0

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.image.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def evaluate(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Loss terms at the current image and the gradient of the total."""
        image = self.image.detach().requires_grad_(True)
        with self._autocast():
            terms = self.loss(image)
        (grad,) = torch.autograd.grad(terms["total"], image)
        return {key: value.detach() for key, value in terms.items()}, grad

    def step(self) -> dict[str, torch.Tensor]:
        """Evaluate, update the image, keep pixels in [0, 1]; returns the evaluated loss terms.

        Nothing here waits for the device: the returned tensors are read back by the caller.
        """
        terms, grad = self.evaluate()
        self.optimizer.step(grad)
        with torch.no_grad():
            self.image.clamp_(0, 1)
        self.step_count += 1
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {
            "image": self.image.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.image.copy_(state["image"].to(self.image.device))
        if state.get("optimizer") is not None:  # else: the optimiser starts afresh from this image
            self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
