"""One stage of a synthesis: move the pixels of an image to minimise an `Objective`.

`Synthesizer.step()` is one evaluation and update (optionally replayed as one CUDA graph); it
also keeps, on the device and without waiting for it, the best iterate so far and an averaged
image. The loop over steps and stages lives in `stylelab.engine.loop`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from stylelab.engine.cuda_graph import GraphedStep, StepPath, planned_path
from stylelab.engine.objective import Objective
from stylelab.engine.optim import LBFGS, Adam, make_optimizer

INITS = ("content", "noise", "style", "image")
KEEPS = ("last", "best")


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


@contextlib.contextmanager
def without_onednn() -> Iterator[None]:
    """Switch oneDNN (mkldnn) off for CPU convolutions; restored afterwards."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # torch types it as its descriptor
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


class BestIterate:
    """The lowest-total image evaluated so far, kept on the device (no host synchronisation)."""

    def __init__(self, image: torch.Tensor):
        self.image = image.detach().clone()
        self.total = torch.full((), float("inf"), device=image.device)
        self.index = torch.full((), -1, dtype=torch.long, device=image.device)  # evaluation
        self.count = torch.zeros((), dtype=torch.long, device=image.device)

    def update(self, total: torch.Tensor, image: torch.Tensor) -> None:
        better = total.float() < self.total  # a NaN total is never better
        self.image.copy_(torch.where(better, image, self.image))
        self.total.copy_(torch.where(better, total.float(), self.total))
        self.index.copy_(torch.where(better, self.count, self.index))
        self.count.add_(1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, key).detach().cpu().clone() for key in _BEST_KEYS}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key in _BEST_KEYS:
            getattr(self, key).copy_(state[key])


_BEST_KEYS = ("image", "total", "index", "count")
TRIAL = "trial/total"  # with a line search: the total of the point evaluated (maybe rejected)


class AveragedImage:
    """Exponential moving average of the image with bias correction (as crowsonkb's EMA)."""

    def __init__(self, image: torch.Tensor, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"optim.ema={decay}: use 0 (off) or a decay in (0, 1), e.g. 0.9")
        self.decay = decay
        self.sum = torch.zeros_like(image)
        self.weight = torch.zeros((), device=image.device)  # 1 - decay**updates

    def update(self, image: torch.Tensor) -> None:
        self.sum.mul_(self.decay).add_(image, alpha=1 - self.decay)
        self.weight.mul_(self.decay).add_(1 - self.decay)

    def value(self, fallback: torch.Tensor) -> torch.Tensor:
        """The average, or `fallback` before the first update."""
        return torch.where(self.weight > 0, self.sum / self.weight.clamp_min(1e-12), fallback)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"sum": self.sum.detach().cpu().clone(), "weight": self.weight.detach().cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.sum.copy_(state["sum"])
        self.weight.copy_(state["weight"])


class Synthesizer:
    """Holds the image being optimised and its optimiser; `step()` does one evaluation.

    `precision="bf16"` runs the VGG forward and backward under bfloat16 autocast; Gram
    matrices and losses are always fp32. `cuda_graph` (default: on for CUDA) replays each
    whole step (forward, backward, optimiser update, clamp, best and average bookkeeping) as
    one CUDA graph after three eager warm-up steps; elsewhere steps run eagerly.
    `history_dtype="bf16"` stores the L-BFGS history in bfloat16; `auto` does so on CUDA with
    bf16 precision, where the gradients themselves come from bf16 arithmetic. `ema` (0: off)
    keeps an averaged image; `first_step` is the global index of this stage's first step;
    `previous` is the synthesizer of the stage before, whose Adam moments carry over (resized).
    `batch_invariant` computes convolutions without oneDNN (see `convolutions`).
    """

    def __init__(
        self,
        loss: Objective,
        image: torch.Tensor,
        optimizer: str = "lbfgs",
        lr: float = 1.0,
        history_size: int = 100,
        precision: str = "fp32",
        cuda_graph: bool | None = None,
        history_dtype: str = "auto",
        ema: float = 0.0,
        first_step: int = 0,
        previous: Synthesizer | None = None,
        line_search: str = "none",
        batch_invariant: bool = False,
    ):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision '{precision}': use fp32 or bf16")
        self.loss = loss
        self.image = image.detach().clone().contiguous()
        on_cuda = self.image.device.type == "cuda"
        self.planned = planned_path(self.image.device, cuda_graph)
        use_graph = self.planned.path == "cuda_graph"
        if history_dtype == "auto":
            history_dtype = "bf16" if on_cuda and precision == "bf16" else "fp32"
        self.optimizer = make_optimizer(
            optimizer, self.image, lr=lr, history_size=history_size,
            history_dtype=history_dtype, capturable=use_graph, line_search=line_search,
            bounds=(0.0, 1.0),
        )  # fmt: skip
        if (
            previous is not None
            and isinstance(previous.optimizer, Adam)
            and isinstance(self.optimizer, Adam)
        ):
            carry_adam_moments(previous.optimizer, self.optimizer)
        self.precision, self.batch_invariant = precision, batch_invariant
        self.step_count = first_step
        self.keys: list[str] = []
        self.best = BestIterate(self.image)
        self.iterate_terms: torch.Tensor | None = None  # line search: the accepted point's terms
        self.average = AveragedImage(self.image, ema) if ema else None
        self.graph = GraphedStep(self._step) if use_graph else None

    @property
    def step_path(self) -> StepPath:
        """How this synthesizer's steps ran: captured, or eager and why."""
        return self.graph.path if self.graph is not None else self.planned

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision of the forward: bf16 autocast, or nothing."""
        if self.precision == "bf16":  # no weight cache: each weight is cast once per step anyway
            return torch.autocast(self.image.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def convolutions(self) -> contextlib.AbstractContextManager:
        """Around forward and backward: with `batch_invariant`, convolutions whose rounding does
        not depend on the batch size (oneDNN's does; the native kernels are slower)."""
        return without_onednn() if self.batch_invariant else contextlib.nullcontext()

    def evaluate(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Loss terms at the current image and the gradient of the total."""
        image = self.image.detach().requires_grad_(True)
        with self.convolutions():
            with self.autocast():
                terms = self.loss(image)
            (grad,) = torch.autograd.grad(terms["total"], image)
        return {key: value.detach() for key, value in terms.items()}, grad

    def _step(self) -> torch.Tensor:
        """One evaluation and update, in place; the loss terms stacked in one tensor."""
        return self.update(*self.evaluate())

    @property
    def searching(self) -> bool:
        """Whether the optimiser has a line search (it may reject the point just evaluated)."""
        return self._searcher is not None

    @property
    def _searcher(self) -> LBFGS | None:
        """The optimiser if it has a line search (only L-BFGS can), else None."""
        optimizer = self.optimizer
        if isinstance(optimizer, LBFGS) and optimizer.line_search != "none":
            return optimizer
        return None

    def update(self, terms: dict[str, torch.Tensor], grad: torch.Tensor) -> torch.Tensor:
        """Take the step for the evaluated `terms` and `grad` (in place, no host sync); returns
        the terms stacked in one tensor (`record` turns it back into a dict).

        With a line search the terms returned are the iterate's (the last accepted point, whose
        total never rises) and `trial/total` is the total of the point just evaluated; the best
        image is the best accepted one. Otherwise every point evaluated is the iterate.
        """
        evaluated = torch.stack([value.float() for value in terms.values()])
        self.keys = list(terms)
        if not self.searching:
            self.best.update(terms["total"], self.image)  # the image just evaluated
        self.optimizer.step(grad, terms["total"])
        with torch.no_grad():
            self.image.clamp_(0, 1)
            if self.average is not None:
                self.average.update(self.image)
        search = self._searcher
        if search is None:
            return evaluated
        accepted = search.accepted
        total = evaluated[self.keys.index("total")]
        self.best.update(torch.where(accepted, total, torch.inf), search.iterate)
        if self.iterate_terms is None:  # the first point evaluated is always accepted
            self.iterate_terms = evaluated.clone()
        self.iterate_terms.copy_(torch.where(accepted, evaluated, self.iterate_terms))
        self.keys.append(TRIAL)
        return torch.cat([self.iterate_terms, total[None]])

    def step(self) -> dict[str, torch.Tensor]:
        """Evaluate, update the image, keep pixels in [0, 1]; returns the evaluated loss terms.

        Nothing here waits for the device: the returned tensors are read back by the caller.
        """
        return self.record(self.graph() if self.graph is not None else self._step())

    def record(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Count a step taken by `update`; its stacked terms as a dict."""
        self.step_count += 1
        return dict(zip(self.keys, values.unbind(), strict=True))

    @property
    def display_image(self) -> torch.Tensor:
        """What frames show: the averaged image with `ema`, else the current iterate (with a
        line search the last accepted point, not the trial about to be evaluated)."""
        if self.average is not None:
            return self.average.value(self.image)
        search = self._searcher
        if search is not None:
            return torch.where(search.steps > 0, search.iterate, self.image)
        return self.image

    def output_image(self, keep: str = "last") -> torch.Tensor:
        """The result: the averaged image with `ema`; else the best evaluated iterate for
        `keep="best"` (once one was evaluated) or the current one for `keep="last"`."""
        if keep not in KEEPS:
            raise ValueError(f"unknown keep '{keep}': use last or best")
        if self.average is not None or keep == "last":
            return self.display_image
        return torch.where(self.best.index >= 0, self.best.image, self.image)

    def state_dict(self, with_optimizer: bool = True) -> dict[str, Any]:
        return {
            "image": self.image.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict() if with_optimizer else None,
            "step": self.step_count,
            "best": self.best.state_dict(),
            "ema": self.average.state_dict() if self.average is not None else None,
            "iterate_terms": None if self.iterate_terms is None else self.iterate_terms.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.image.copy_(state["image"].to(self.image.device))
        if state.get("optimizer") is not None:  # else: the optimiser starts afresh from this image
            self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        if state.get("best") is not None:
            self.best.load_state_dict(state["best"])
        if self.average is not None and state.get("ema") is not None:
            self.average.load_state_dict(state["ema"])
        if state.get("iterate_terms") is not None:
            terms = state["iterate_terms"].to(self.image.device)
            if self.iterate_terms is None:
                self.iterate_terms = terms.clone()
            else:
                self.iterate_terms.copy_(terms)
        if self.graph is not None:  # Adam replaces its state tensors: capture again
            self.graph.reset()


def upsample(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize to `size` (H, W), clamped to [0, 1]: the start of the next stage."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.clone()
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def carry_adam_moments(old: Adam, new: Adam) -> None:
    """Give `new` the step count and moments of `old`, resized to its image (as crowsonkb does)."""
    states = list(old.optimizer.state.values())
    if not states:
        return
    old_state = states[0]
    size = tuple(new.param.shape[-2:])
    state = {"step": old_state["step"].clone()}
    for key in ("exp_avg", "exp_avg_sq"):
        moment = F.interpolate(old_state[key], size=size, mode="bilinear", align_corners=False)
        state[key] = moment.clamp_min(0) if key == "exp_avg_sq" else moment
    new.optimizer.state[new.param] = state
