"""The optimisation loop: move the pixels of an image to minimise a `GatysLoss`."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from stylelab.engine.cuda_graph import GraphedStep
from stylelab.engine.losses import GatysLoss
from stylelab.engine.optim import make_optimizer

INITS = ("content", "noise", "style", "image")


def default_precision(device: torch.device) -> str:
    """`precision=auto`: bf16 where the hardware computes it natively (CUDA; CPUs with
    AVX512-BF16 or AMX: forward + backward 1.6x faster than fp32 on a Zen 4), else fp32."""
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu":
        native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return (
            "bf16" if any(getattr(torch.cpu, name, lambda: False)() for name in native) else "fp32"
        )
    return "fp32"


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

    `precision="bf16"` runs the VGG forward and backward under bfloat16 autocast; Gram
    matrices and losses are always fp32. `cuda_graph` (default: on for CUDA) replays each
    whole step (forward, backward, optimiser update, clamp) as one CUDA graph after three
    eager warm-up steps; elsewhere steps run eagerly. `history_dtype="bf16"` stores the L-BFGS
    history in bfloat16: half its memory and half the optimiser's memory traffic; `auto` does
    so on CUDA with bf16 precision, where the gradients themselves come from bf16 arithmetic.
    """

    def __init__(
        self,
        loss: GatysLoss,
        image: torch.Tensor,
        optimizer: str = "lbfgs",
        lr: float = 1.0,
        history_size: int = 100,
        precision: str = "fp32",
        cuda_graph: bool | None = None,
        history_dtype: str = "auto",
        line_search: str = "none",
    ):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision '{precision}': use fp32 or bf16")
        self.loss = loss
        self.image = image.detach().clone().contiguous()
        on_cuda = self.image.device.type == "cuda"
        use_graph = on_cuda and (cuda_graph is None or cuda_graph)
        if history_dtype == "auto":
            history_dtype = "bf16" if on_cuda and precision == "bf16" else "fp32"
        self.optimizer = make_optimizer(
            optimizer, self.image, lr=lr, history_size=history_size,
            history_dtype=history_dtype, capturable=use_graph, line_search=line_search,
        )  # fmt: skip
        self.precision = precision
        self.step_count = 0
        self.keys: list[str] = []
        self.graph = GraphedStep(self._step) if use_graph else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":  # no weight cache: each weight is cast once per step anyway
            return torch.autocast(self.image.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def evaluate(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Loss terms at the current image and the gradient of the total."""
        image = self.image.detach().requires_grad_(True)
        with self._autocast():
            terms = self.loss(image)
        (grad,) = torch.autograd.grad(terms["total"], image)
        return {key: value.detach() for key, value in terms.items()}, grad

    def _step(self) -> torch.Tensor:
        """One evaluation and update, in place; the loss terms stacked in one tensor."""
        terms, grad = self.evaluate()
        self.optimizer.step(grad, terms["total"])
        with torch.no_grad():
            self.image.clamp_(0, 1)
        self.keys = list(terms)
        return torch.stack([value.float() for value in terms.values()])

    def step(self) -> dict[str, torch.Tensor]:
        """Evaluate, update the image, keep pixels in [0, 1]; returns the evaluated loss terms.

        Nothing here waits for the device: the returned tensors are read back by the caller.
        """
        values = self.graph() if self.graph is not None else self._step()
        self.step_count += 1
        return dict(zip(self.keys, values.unbind(), strict=True))

    def state_dict(self) -> dict[str, Any]:
        return {
            "image": self.image.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.image.copy_(state["image"].to(self.image.device))
        if state.get("optimizer") is not None:  # else: the optimiser starts afresh from this image
            self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        if self.graph is not None:  # Adam replaces its state tensors: capture again
            self.graph.reset()
