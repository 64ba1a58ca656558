"""One stage of a synthesis: move the pixels of an image to minimise an `Objective`.

`Synthesizer.step()` is one evaluation and update (optionally replayed as one CUDA graph); it
also keeps, on the device and without waiting for it, the best iterate so far and an averaged
image. The loop over steps and stages lives in `stylelab.engine.loop`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from stylelab.engine.cuda_graph import GraphedStep, StepPath, planned_path
from stylelab.engine.objective import Objective
from stylelab.engine.optimizers import OptimizerMaker, Placement, loose_maker
from stylelab.engine.options import OptionError

Value = TypeVar("Value")
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


def check_ema(ema: float) -> None:
    """`ema`: 0 (no averaged image) or an averaging decay in (0, 1)."""
    if not 0 <= ema < 1:
        raise OptionError("ema", f"={ema}: use 0 (off) or a decay in (0, 1), e.g. 0.9")


class AveragedImage:
    """Exponential moving average of the image with bias correction (as crowsonkb's EMA)."""

    def __init__(self, image: torch.Tensor, decay: float):
        check_ema(decay)
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

    `optimizer` is an `OptimizerMaker` (see `optimizers`), or a registered name whose options
    are `lr`, `history_size` and `options` (a fixed step unless `line_search` is given).
    `precision="bf16"` runs the VGG forward and backward under bfloat16 autocast; Gram
    matrices and losses are always fp32. `cuda_graph` (default: on for CUDA) replays each
    whole step (forward, backward, optimiser update, clamp, best and average bookkeeping) as
    one CUDA graph after three eager warm-up steps; elsewhere steps run eagerly. `ema` (0: off)
    keeps an averaged image; `first_step` is the global index of this stage's first step;
    `previous` is the synthesizer of the stage before, whose optimiser state carries over as its
    kind decides (Adam: its moments, resized). `batch_invariant` computes convolutions without
    oneDNN (see `convolutions`).
    """

    def __init__(
        self,
        loss: Objective,
        image: torch.Tensor,
        optimizer: OptimizerMaker | str = "lbfgs",
        lr: float = 1.0,
        history_size: int = 100,
        *,
        precision: str = "fp32",
        cuda_graph: bool | None = None,
        ema: float = 0.0,
        first_step: int = 0,
        previous: Synthesizer | None = None,
        batch_invariant: bool = False,
        **options: Any,
    ):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision '{precision}': use fp32 or bf16")
        self.loss = loss
        self.image = image.detach().clone().contiguous()
        self.planned = planned_path(self.image.device, cuda_graph)
        use_graph = self.planned.path == "cuda_graph"
        if isinstance(optimizer, str):
            settings = {"lr": lr, "history_size": history_size, "line_search": "none", **options}
            optimizer = loose_maker(optimizer, **settings)
        self.optimizer = optimizer(self.image, Placement(capturable=use_graph, precision=precision))
        if previous is not None:
            self.optimizer.carry_from(previous.optimizer)
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
        terms, grad = self.differentiate(self.image, lambda image: _with_total(self.loss(image)))
        return {key: value.detach() for key, value in terms.items()}, grad

    def differentiate(
        self, image: torch.Tensor, loss: Callable[[torch.Tensor], tuple[Value, torch.Tensor]]
    ) -> tuple[Value, torch.Tensor]:
        """`loss(image)` (what it computes, and the scalar to differentiate) under this
        synthesis's convolutions and autocast, and the gradient of that scalar with respect to
        `image`: the evaluate/backward block of a single step and of a batched one."""
        image = image.detach().requires_grad_(True)
        with self.convolutions():
            with self.autocast():
                value, total = loss(image)
            (grad,) = torch.autograd.grad(total, image)
        return value, grad

    def _step(self) -> torch.Tensor:
        """One evaluation and update, in place; the loss terms stacked in one tensor."""
        return self.update(*self.evaluate())

    @property
    def searching(self) -> bool:
        """Whether the optimiser has a line search (it may reject the point just evaluated)."""
        return self.optimizer.searching

    def update(self, terms: dict[str, torch.Tensor], grad: torch.Tensor) -> torch.Tensor:
        """Take the step for the evaluated `terms` and `grad` (in place, no host sync); returns
        the terms stacked in one tensor (`record` turns it back into a dict).

        With a line search the terms returned are the iterate's (the last accepted point, whose
        total never rises) and `trial/total` is the total of the point just evaluated; the best
        image is the best accepted one. Otherwise every point evaluated is the iterate.
        """
        self.keys = list(terms)
        evaluated = torch.stack([value.float() for value in terms.values()])
        self.before_update(evaluated)
        self.optimizer.step(grad, terms["total"])
        return self.after_update(evaluated)

    def before_update(self, evaluated: torch.Tensor) -> None:
        """What `update` does before the optimiser moves the image, given the evaluated terms
        stacked in the order of `keys`: without a line search, the best iterate."""
        if not self.searching:  # the image just evaluated
            self.best.update(evaluated[self.keys.index("total")], self.image)

    def after_update(self, evaluated: torch.Tensor) -> torch.Tensor:
        """What `update` does after the optimiser moved the image; the terms to record."""
        with torch.no_grad():
            self.image.clamp_(0, 1)
            if self.average is not None:
                self.average.update(self.image)
        if not self.searching:
            return evaluated
        accepted = self.optimizer.accepted
        total = evaluated[self.keys.index("total")]
        self.best.update(torch.where(accepted, total, torch.inf), self.optimizer.iterate)
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
        if self.searching:
            return torch.where(self.optimizer.steps > 0, self.optimizer.iterate, self.image)
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


def _with_total(terms: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return terms, terms["total"]


def upsample(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize to `size` (H, W), clamped to [0, 1]: the start of the next stage."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.clone()
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
