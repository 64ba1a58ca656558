"""Optimisers for pixels: a host-sync-free, graph-capturable L-BFGS and Adam, one interface.

`LBFGS` is torch.optim.LBFGS without line search (fixed step, as the PyTorch tutorial runs
it), one evaluation per step, rewritten so that a step never waits for the GPU and always
launches the same kernels on tensors of the same shapes: all `history_size` slots exist from
the start (an empty slot has s = y = 0 and rho = 0 and contributes nothing), the step counter
and the ring pointer live on the device, and the first step and rejected curvature pairs are
handled by masks instead of branches. So a whole step can be captured in a CUDA graph. The
two-loop recursion is done in the compact matrix form (Byrd, Nocedal & Schnabel, 1994): two
passes over the history instead of hundreds of small kernels.

`line_search="armijo"` adds a backtracking line search written as an on-device state machine:
every `step(grad, loss)` is still exactly one evaluation, with no host decision. The point just
evaluated is a trial x_b + t·d; if it passes the Armijo test it becomes the new base (history
updated, new direction, trial step `lr`), else the step shrinks (safeguarded quadratic
interpolation) and the parameter goes back to x_b + t'·d. After `max_backtracks` rejections
in a row the history is switched off and the search restarts along -g from the base. Both
outcomes are computed every step and selected with masks, so a step stays graph-capturable and
costs one pass of the history more than a fixed step only in a few vector selects.

With `bounds=(lo, hi)` (the Synthesizer passes (0, 1): pixels) the search is projected, as in
L-BFGS-B's active set: at the base, a coordinate at a bound whose gradient points outwards is
held fixed (its gradient is left out of the quasi-Newton product and its direction is 0), the
trial is projected onto the box, and the Armijo test uses the displacement actually taken. The
curvature pair (s, y) is stored on the coordinates free at both of its ends: a held pixel does
not move, and its gradient change is the clamp's, not the loss's curvature (with it, the pairs
of a run with 5-10% of its pixels at a bound scaled the directions wildly and the search crawled
along a plateau, issue 15). So the direction is a descent direction for the free coordinates and
is not spent pushing pixels against the clamp (which made unprojected trials fail).

A new direction's first trial is lr, but at most twice the step just accepted; where the loss
curves down (s.y <= eps, no pair stored) it may grow past lr (with bounds, moving no coordinate
further than the box is wide). Without that, backtracking alone can only shrink: on
random-weight style losses the first pairs have negative curvature and the search was plain
gradient descent at step lr (loss falling 0.5% per evaluation, issue 15).

The Synthesizer logs the iterate (the last accepted point: its total never rises) and, as
`trial/total`, the total of every point evaluated, and keeps the best accepted image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from stylelab.engine.optimizers import (
    BatchOptimizer,
    OptimizerMaker,
    PixelOptimizer,
    Placement,
    loose_maker,
    register_optimizer,
)
from stylelab.engine.options import OptionError, check_positive

HISTORY_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_STATE_KEYS = ("history", "sy", "yy", "rho", "gamma", "prev_flat", "prev_grad", "steps", "stored")
_SEARCH_KEYS = ("direction", "base_loss", "trial_step", "rejections", "accepted")
LINE_SEARCHES = ("auto", "none", "armijo")  # auto: armijo for L-BFGS, none for Adam


def resolve_line_search(line_search: str) -> str:
    """L-BFGS's `line_search="auto"` made concrete: armijo (other kinds have none)."""
    return "armijo" if line_search == "auto" else line_search


def _check_line_search(line_search: str, searches: tuple[str, ...] = LINE_SEARCHES) -> None:
    if line_search not in LINE_SEARCHES:
        raise OptionError("line_search", f"={line_search}: use auto, none or armijo")
    if line_search not in searches:
        raise OptionError(
            "line_search", f"={line_search} is for optim=lbfgs only (L-BFGS only has a line search)"
        )


@dataclass(frozen=True)
class LBFGSOptions:
    """`optim=lbfgs`'s options (README "Convergence")."""

    lr: float = 1.0
    history_size: int = 100
    line_search: str = "auto"  # auto (armijo) | none | armijo
    history_dtype: str = "auto"  # auto (bf16 on CUDA with bf16 precision) | fp32 | bf16

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        if self.history_size < 1:
            raise OptionError("history_size", f"={self.history_size}: must be >= 1")
        _check_line_search(self.line_search)
        if self.history_dtype not in ("auto", *HISTORY_DTYPES):
            raise OptionError(
                "history_dtype", f"={self.history_dtype}: unknown history_dtype: use fp32 or bf16"
            )


def _matmul(
    a: torch.Tensor, b: torch.Tensor, low: torch.dtype, dtype: torch.dtype, out_dtype_ok: bool
) -> torch.Tensor:
    """a @ b with operands in `low` and a `dtype` result (accumulated in fp32 where possible)."""
    if low == dtype:
        return a @ b
    a, b = a.to(low), b.to(low)
    return torch.mm(a, b, out_dtype=dtype) if out_dtype_ok else (a @ b).to(dtype)


def _supports_out_dtype(device: torch.device) -> bool:
    try:
        a = torch.ones(2, 2, device=device, dtype=torch.bfloat16)
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        return False


@register_optimizer
class LBFGS(PixelOptimizer):
    """Limited-memory BFGS over one flat parameter tensor, one gradient evaluation per step.

    `history_dtype="bf16"` stores the s/y history in bfloat16 (half the memory, for large
    images); dot products are still accumulated in fp32.
    """

    name = "lbfgs"
    Options = LBFGSOptions

    def __init__(
        self,
        param: torch.Tensor,
        lr: float = 1.0,
        history_size: int = 100,
        eps: float = 1e-10,
        history_dtype: str = "fp32",
        line_search: str = "none",
        c1: float = 1e-4,
        max_backtracks: int = 10,
        bounds: tuple[float, float] | None = None,
    ):
        LBFGSOptions(lr, history_size, line_search, history_dtype)  # the checks
        if history_dtype == "auto":
            history_dtype = "fp32"  # (`build` resolves auto from the device and precision)
        if max_backtracks < 1:
            raise ValueError("max_backtracks must be at least 1")
        line_search = resolve_line_search(line_search)
        self.param, self.lr, self.history_size, self.eps = param, lr, history_size, eps
        n, m, device = param.numel(), history_size, param.device
        self.dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
        dtype = self.dtype if history_dtype == "fp32" else HISTORY_DTYPES[history_dtype]
        self.history = torch.zeros(2 * m, n, device=device, dtype=dtype)  # rows: s_0..s_m-1, y_0..
        self.sy = torch.zeros(m, m, device=device, dtype=self.dtype)  # sy[a, b] = s_a . y_b
        self.yy = torch.zeros(m, m, device=device, dtype=self.dtype)  # yy[a, b] = y_a . y_b
        self.rho = torch.zeros(m, device=device, dtype=self.dtype)
        self.gamma = torch.ones((), device=device, dtype=self.dtype)
        self.prev_flat = torch.zeros(n, device=device, dtype=self.dtype)
        self.prev_grad = torch.zeros(n, device=device, dtype=self.dtype)
        self.steps = torch.zeros((), dtype=torch.long, device=device)  # steps taken
        self.stored = torch.zeros((), dtype=torch.long, device=device)  # pairs accepted so far
        self._slots = torch.arange(m, device=device)
        self._eye = torch.eye(m, device=device, dtype=self.dtype)
        self._out_dtype = dtype != self.dtype and _supports_out_dtype(device)
        self.line_search, self.c1, self.max_backtracks = line_search, c1, max_backtracks
        self.bounds = bounds  # line search only: the box the trials are projected onto
        self._keys = _STATE_KEYS + (_SEARCH_KEYS if line_search != "none" else ())
        self.direction = torch.zeros(n, device=device, dtype=self.dtype)  # d of the trial
        self.base_loss = torch.zeros((), device=device, dtype=self.dtype)  # f(x_b)
        self.trial_step = torch.zeros((), device=device, dtype=self.dtype)  # t: param = x_b + t d
        self.rejections = torch.zeros((), dtype=torch.long, device=device)  # in a row
        self.accepted = torch.ones((), dtype=torch.bool, device=device)  # last point evaluated

    @classmethod
    def build(cls, param: torch.Tensor, options: Any, placement: Placement) -> LBFGS:
        history_dtype = options.history_dtype
        if history_dtype == "auto":
            bf16 = param.device.type == "cuda" and placement.precision == "bf16"
            history_dtype = "bf16" if bf16 else "fp32"
        return cls(
            param, lr=options.lr, history_size=options.history_size, history_dtype=history_dtype,
            line_search=options.line_search, bounds=placement.bounds,
        )  # fmt: skip

    @classmethod
    def memory_copies(cls, options: Any) -> float:
        """The s and y history, and param, grad and direction."""
        return 2 * options.history_size + 3

    @property
    def searching(self) -> bool:  # type: ignore[override]
        return self.line_search != "none"

    def _matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _matmul(a, b, self.history.dtype, self.dtype, self._out_dtype)

    @property
    def iterate(self) -> torch.Tensor:
        """The last accepted point (line search) or the last point evaluated (fixed step)."""
        return self.prev_flat.view(self.param.shape)

    def _remember(
        self,
        flat: torch.Tensor,
        grad: torch.Tensor,
        accept: torch.Tensor | None = None,
        project: torch.Tensor | None = None,
        free: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the newest pair (s, y) if s.y > eps (and this is not the first step).

        With `accept` (line search), only when the point evaluated was accepted; with `free`
        (bounds), s and y are kept on the coordinates where `free` is 1.

        Returns history @ project (default: grad; the projections the direction needs), from
        the same pass over the history that updates the s.y and y.y tables, and whether the
        pair was stored.
        """
        s, y = flat - self.prev_flat, grad - self.prev_grad
        if free is not None:
            s, y = s * free, y * free
        ys, yy_new = self._dot(s, y), self._dot(y, y)
        valid = (ys > self.eps) & (self.steps > 0)
        if accept is not None:
            valid = valid & accept
        projections = self._store(s, y, ys, valid, grad if project is None else project)
        self.gamma.copy_(torch.where(valid, ys / (yy_new + 1e-30), self.gamma))
        self.stored.add_(valid.long())
        return projections, valid

    @staticmethod
    def _dot(a: Tensor, b: Tensor) -> Tensor:
        return torch.dot(a, b)

    def _store(self, s: Tensor, y: Tensor, ys: Tensor, valid: Tensor, g: Tensor) -> Tensor:
        """Write the pair (s, y) into its history slot where `valid`, with its rows and columns
        of the s.y and y.y tables and its rho; returns history @ g from the same pass."""
        m = self.history_size
        slot, low = self.stored % m, self.history.dtype
        rows = torch.stack([slot, slot + m])
        new = torch.where(valid, torch.stack([s.to(low), y.to(low)]), self.history[rows])
        self.history.index_copy_(0, rows, new)
        p = self._matmul(self.history, torch.stack([v.to(low) for v in (g, s, y)], dim=1))
        hit = (self._slots == slot) & valid  # one-hot mask of the slot written
        sy = torch.where(hit[:, None], p[m:, 1][None, :], self.sy)  # row: s_new . y_b
        self.sy.copy_(torch.where(hit[None, :], p[:m, 2][:, None], sy))  # column: s_a . y_new
        yy = torch.where(hit[:, None], p[m:, 2][None, :], self.yy)
        self.yy.copy_(torch.where(hit[None, :], p[m:, 2][:, None], yy))
        self.rho.copy_(torch.where(hit, 1.0 / ys.clamp_min(self.eps), self.rho))
        return p[:, 0]

    def _direction(self, grad: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
        """-H g by the compact two-loop recursion over all slots, oldest first."""
        m = self.history_size
        order = (self._slots + self.stored) % m  # empty slots first: they contribute nothing
        s_g, y_g = projections[:m][order], projections[m:][order]
        rho = self.rho[order]
        upper = torch.triu(self.sy[order][:, order], diagonal=1)  # s_i . y_j for i < j
        yy = self.yy[order][:, order]
        alpha = torch.linalg.solve_triangular(
            self._eye + rho[:, None] * upper, (rho * s_g)[:, None], upper=True
        )[:, 0]
        y_r0 = self.gamma * (y_g - yy @ alpha)
        beta = torch.linalg.solve_triangular(
            self._eye + rho[:, None] * upper.T,
            (rho * (y_r0 + upper.T @ alpha))[:, None],
            upper=False,
        )[:, 0]
        back = (self._slots - self.stored) % m  # slot -> position in `order`
        coefficients = torch.cat([(alpha - beta)[back], -self.gamma * alpha[back]])
        correction = self._matmul(coefficients[None, :], self.history)[0]
        return -(self.gamma * grad + correction)

    def _first_step(self, grad: torch.Tensor) -> torch.Tensor:
        """torch.optim.LBFGS's first step size: lr * min(1, 1 / |g|_1)."""
        return self.lr * torch.clamp(1.0 / grad.abs().sum(), max=1.0)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        """One evaluation's update, given the gradient (and loss) at the parameter's value.

        Fixed step: move along the L-BFGS direction. Line search: `loss` is required; the
        point just evaluated is accepted or rejected (`accepted`) and the next trial set.
        """
        flat, grad = self.param.view(-1), grad.reshape(-1).to(self.dtype)
        if self.line_search == "none":
            self._fixed_step(flat, grad)
            return
        if loss is None:
            raise ValueError(f"line_search={self.line_search} needs the loss at each step")
        self._search_step(flat, grad, loss.detach().reshape(()).to(self.dtype))

    def _fixed_step(self, flat: torch.Tensor, grad: torch.Tensor) -> None:
        projections, _ = self._remember(flat, grad)
        direction = self._direction(grad, projections)
        step_size = torch.where(self.steps == 0, self._first_step(grad), self._rate)
        self.prev_flat.copy_(flat)
        self.prev_grad.copy_(grad)
        flat.add_(direction * self._each(step_size))
        self.steps.add_(1)

    @property
    def _rate(self) -> Tensor | float:
        """The fixed step's learning rate (one per job in `BatchedLBFGS`)."""
        return self.lr

    @staticmethod
    def _each(step_size: Tensor) -> Tensor:
        """A step size shaped to scale the flat direction (per row in `BatchedLBFGS`)."""
        return step_size

    def _armijo(self, flat: torch.Tensor, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether the trial is accepted, and g_b.(x - x_b) along the displacement taken.

        The slope uses the actual displacement (the caller may have clamped the trial), and is
        capped at 0, so that an accepted point is never higher than the base.
        """
        slope = torch.dot(self.prev_grad, flat - self.prev_flat)
        decrease = loss <= self.base_loss + self.c1 * slope.clamp(max=0.0)
        return (self.steps == 0) | (torch.isfinite(loss) & decrease), slope

    def _shrink(self, loss: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        """Next trial step after a rejection: minimiser of the quadratic through f_b, the slope
        and f(trial), kept within [0.1, 0.5] of the rejected step (halving if undefined)."""
        curvature = loss - self.base_loss - slope
        fraction = -slope / (2 * curvature)
        fraction = torch.where(torch.isfinite(fraction) & (curvature > 0), fraction, 0.5)
        return self.trial_step * fraction.clamp(0.1, 0.5)

    def _free(self, flat: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """1 where a coordinate may move, 0 where it sits at a bound and -grad points out."""
        if self.bounds is None:
            return torch.ones_like(flat)
        lo, hi = self.bounds
        held = ((flat <= lo) & (grad > 0)) | ((flat >= hi) & (grad < 0))
        return (~held).to(self.dtype)

    def _project(self, flat: torch.Tensor) -> torch.Tensor:
        return flat if self.bounds is None else flat.clamp(*self.bounds)

    def _full_step(
        self, direction: torch.Tensor, taken: torch.Tensor, paired: torch.Tensor
    ) -> torch.Tensor:
        """First trial along a new direction: twice as long as the step just accepted, at most
        `lr`. The projected direction is often badly scaled (|d| ~ 1e4 on pixels in [0, 1]);
        starting every search at lr then costs several rejected trials per step.

        Where the step's curvature pair was not stored (`paired` false: s.y <= eps, the loss
        curved down) the quasi-Newton scale says nothing and lr would be plain gradient descent
        at step lr, so the trial may grow past lr, but (with bounds) moves no coordinate further
        than the box is wide. That cap is for this unbounded growth only: on quasi-Newton steps
        it halved the progress on the offline problems (issue 15)."""
        grow = 2 * taken / direction.norm().clamp_min(1e-30)
        unpaired = grow
        if self.bounds is not None:
            width = self.bounds[1] - self.bounds[0]
            unpaired = torch.minimum(grow, width / direction.abs().amax().clamp_min(1e-30))
        return torch.where(paired, grow.clamp(max=self.lr), unpaired)

    def _search_step(self, flat: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor) -> None:
        accept, slope = self._armijo(flat, loss)
        first = self.steps == 0
        free, base_free = self._free(flat, grad), self._free(self.prev_flat, self.prev_grad)
        free_grad = grad * free  # the gradient of the coordinates that may move
        projections, paired = self._remember(
            flat, grad, accept, project=free_grad, free=free * base_free
        )
        new_direction = self._direction(free_grad, projections) * free
        descent = torch.dot(grad, new_direction) < 0  # else (rounding, bf16 history): -gamma g
        new_direction = torch.where(descent, new_direction, -self.gamma * free_grad)
        rejections = torch.where(accept, 0, self.rejections + 1)
        restart = rejections >= self.max_backtracks  # give up on this direction: -g, no history
        self.rho.mul_((~restart).to(self.dtype))
        self.rejections.copy_(torch.where(restart, 0, rejections))
        shrunk = self._shrink(loss, slope)
        self.prev_flat.copy_(torch.where(accept, flat, self.prev_flat))
        self.prev_grad.copy_(torch.where(accept, grad, self.prev_grad))
        self.base_loss.copy_(torch.where(accept, loss, self.base_loss))
        fresh = self._first_step(self.prev_grad)
        steepest = -self.prev_grad * torch.where(accept, free, base_free)  # at the new base
        kept = torch.where(restart, steepest, self.direction)
        taken = self.trial_step * self.direction.norm()  # length of the step just tried
        self.direction.copy_(torch.where(accept, new_direction, kept))
        full = self._full_step(new_direction, taken, paired)
        trial = torch.where(accept, torch.where(first, fresh, full), shrunk)
        self.trial_step.copy_(torch.where(restart, fresh, trial))
        self.accepted.copy_(accept)
        flat.copy_(self._project(self.prev_flat + self.trial_step * self.direction))
        self.steps.add_(1)

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key).clone() for key in self._keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy a state in place (tensors keep their addresses, so a captured graph stays valid)."""
        missing = [key for key in self._keys if key not in state]
        if missing:
            raise ValueError(
                f"not an L-BFGS state of this version and line_search={self.line_search} "
                f"(missing {', '.join(missing)})"
            )
        for key in self._keys:
            current, value = getattr(self, key), state[key]
            if value.shape != current.shape:
                raise ValueError(
                    f"L-BFGS state '{key}' has shape {tuple(value.shape)}, expected "
                    f"{tuple(current.shape)} (another image size or history_size?)"
                )
            current.copy_(value)

    @classmethod
    def batched(cls, optimizers: Sequence[PixelOptimizer]) -> BatchOptimizer | None:
        """One L-BFGS over the batch's images with per-job history (`BatchedLBFGS`)."""
        from stylelab.engine.batched_optim import BatchedLBFGS  # it extends this class

        return BatchedLBFGS.adopt(optimizers)


@dataclass(frozen=True)
class AdamOptions:
    """`optim=adam`'s options."""

    lr: float = 0.02
    line_search: str = "auto"  # auto or none: Adam has no line search

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        _check_line_search(self.line_search, ("auto", "none"))


@register_optimizer
class Adam(PixelOptimizer):
    """torch.optim.Adam over the image, with the same `step(grad)` interface as `LBFGS`.

    `capturable=True` (CUDA only) keeps the step count on the device, for CUDA graphs. Its
    moments carry over to the next stage, resized (as crowsonkb does).
    """

    name = "adam"
    Options = AdamOptions

    def __init__(
        self,
        param: torch.Tensor,
        lr: float = 0.02,
        betas: tuple[float, float] = (0.9, 0.999),
        capturable: bool = False,
    ):
        self.param = param
        cuda = param.device.type == "cuda"
        self.optimizer = torch.optim.Adam(
            [param], lr=lr, betas=betas, fused=cuda or None, capturable=capturable and cuda
        )

    @torch.no_grad()
    def step(self, grad: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        """One update from the gradient at the parameter's value (`loss` is not needed)."""
        self.param.grad = grad.reshape(self.param.shape).contiguous()  # fused Adam: same strides
        self.optimizer.step()
        self.param.grad = None

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    @classmethod
    def build(cls, param: torch.Tensor, options: Any, placement: Placement) -> Adam:
        return cls(param, lr=options.lr, capturable=placement.capturable)

    def carry_from(self, previous: PixelOptimizer) -> None:
        """The step count and moments of `previous` (an Adam), resized to this image."""
        states = list(previous.optimizer.state.values()) if isinstance(previous, Adam) else []
        if not states:
            return
        old_state = states[0]
        size = tuple(self.param.shape[-2:])
        state = {"step": old_state["step"].clone()}
        for key in ("exp_avg", "exp_avg_sq"):
            moment = F.interpolate(old_state[key], size=size, mode="bilinear", align_corners=False)
            state[key] = moment.clamp_min(0) if key == "exp_avg_sq" else moment
        self.optimizer.state[self.param] = state

    @classmethod
    def batched(cls, optimizers: Sequence[PixelOptimizer]) -> BatchOptimizer | None:
        """One Adam over the batch's images with per-job moments (`BatchedAdam`)."""
        from stylelab.engine.batched_optim import BatchedAdam  # it builds on this module

        return BatchedAdam.adopt(optimizers)


def make_optimizer(
    name: str,
    param: torch.Tensor,
    lr: float,
    history_size: int = 100,
    history_dtype: str = "fp32",
    capturable: bool = False,
    line_search: str = "none",
    bounds: tuple[float, float] | None = None,
) -> PixelOptimizer:
    """A registered optimiser over `param` from loose settings (those its kind lacks are
    ignored; `line_search`: auto, none or armijo; `bounds`: the box L-BFGS's trials stay in)."""
    maker: OptimizerMaker = loose_maker(
        name, lr=lr, history_size=history_size, history_dtype=history_dtype,
        line_search=line_search,
    )  # fmt: skip
    return maker(param, Placement(capturable=capturable, bounds=bounds))
