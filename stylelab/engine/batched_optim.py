"""One L-BFGS for the K images of a batch: `optim.LBFGS`'s step with a leading job axis.

`BatchedLBFGS.adopt(optimizers)` stacks the jobs' L-BFGS states (history, s.y and y.y tables,
previous point and gradient, step counters, line-search state) and the jobs' images into (K, ...)
tensors, and points each job's own `LBFGS` (and image) at its row of them. So one two-loop
recursion, one Armijo test and one set of masked selects update every job, while each job's
optimiser is still the object it was: its `state_dict` is the job's state alone (a stop
checkpoints each job as before), `load_state_dict` writes into the batch, and a job leaving the
batch keeps a working optimiser. Every per-job quantity (learning rate, step size, curvature pair
accepted, rejections in a row) is a (K,) tensor; nothing is read back on the host, so a batched
step stays capturable in one CUDA graph.

The jobs must agree on what shapes the arithmetic (history size and dtype, line search, bounds,
eps, c1, max_backtracks); their learning rates may differ. The arithmetic is the single-job
arithmetic with batched kernels, so results match a job run alone up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from stylelab.engine.optim import _SEARCH_KEYS, _STATE_KEYS, LBFGS, Adam


def _signature(optimizer: LBFGS) -> tuple:
    return (
        optimizer.history_size, optimizer.history.dtype, optimizer.dtype, optimizer.eps,
        optimizer.line_search, optimizer.c1, optimizer.max_backtracks, optimizer.bounds,
        optimizer.param.shape, optimizer.param.dtype, optimizer.param.device,
    )  # fmt: skip


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of (K, n) tensors, (K,)."""
    return torch.bmm(a[:, None, :], b[:, :, None])[:, 0, 0]


class BatchedLBFGS(LBFGS):
    """The L-BFGS step of K jobs at once over their stacked states (see the module's doc).

    Its tensors carry a leading job axis; the elementwise helpers (`_shrink`, `_free`,
    `_project`) are `LBFGS`'s own, the rest is redone with batched kernels.
    """

    def __init__(self, optimizers: Sequence[LBFGS]):  # not LBFGS.__init__: adopts their states
        first = optimizers[0]
        self.optimizers = list(optimizers)
        self.history_size, self.eps, self.dtype = first.history_size, first.eps, first.dtype
        self.line_search, self.c1 = first.line_search, first.c1
        self.max_backtracks, self.bounds = first.max_backtracks, first.bounds
        device = first.param.device
        self._slots, self._eye = first._slots, first._eye
        self._out_dtype = first._out_dtype
        self.rates = torch.tensor([o.lr for o in optimizers], dtype=self.dtype, device=device)
        self._keys = _STATE_KEYS + _SEARCH_KEYS
        for key in self._keys:
            stacked = torch.stack([getattr(o, key) for o in optimizers])
            setattr(self, key, stacked)
            for row, optimizer in zip(stacked, optimizers, strict=True):
                setattr(optimizer, key, row)
        self.param = torch.cat([o.param for o in optimizers])  # the batch's images
        for k, optimizer in enumerate(optimizers):
            optimizer.param = self.param[k : k + 1].view(optimizer.param.shape)

    @classmethod
    def adopt(cls, optimizers: Sequence[object]) -> BatchedLBFGS | None:
        """The batched optimiser of these jobs, or None where they cannot share one (not all
        L-BFGS, or settings that shape the arithmetic differ)."""
        if not optimizers or not all(isinstance(o, LBFGS) for o in optimizers):
            return None
        lbfgs: list[LBFGS] = list(optimizers)  # type: ignore[arg-type]
        if len({_signature(o) for o in lbfgs}) > 1:
            return None
        return cls(lbfgs)

    def _matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        low = self.history.dtype
        if low == self.dtype:
            return torch.bmm(a, b)
        a, b = a.to(low), b.to(low)
        if self._out_dtype:
            try:
                return torch.bmm(a, b, out_dtype=self.dtype)
            except (RuntimeError, TypeError, NotImplementedError):
                self._out_dtype = False
        return torch.bmm(a, b).to(self.dtype)

    _dot = staticmethod(_dot)  # row-wise: one dot product per job

    def _store(self, s: Tensor, y: Tensor, ys: Tensor, valid: Tensor, g: Tensor) -> Tensor:
        """`LBFGS._store` for every job: each job's pair into its own slot where `valid`."""
        m, k, n = self.history_size, s.shape[0], s.shape[1]
        slot, low = self.stored % m, self.history.dtype
        rows = torch.stack([slot, slot + m], dim=1)[:, :, None].expand(k, 2, n)
        new = torch.where(
            valid[:, None, None],
            torch.stack([s.to(low), y.to(low)], 1),
            self.history.gather(1, rows),
        )
        self.history.scatter_(1, rows, new)
        p = self._matmul(self.history, torch.stack([v.to(low) for v in (g, s, y)], dim=2))
        hit = (self._slots[None, :] == slot[:, None]) & valid[:, None]
        sy = torch.where(hit[:, :, None], p[:, m:, 1][:, None, :], self.sy)
        self.sy.copy_(torch.where(hit[:, None, :], p[:, :m, 2][:, :, None], sy))
        yy = torch.where(hit[:, :, None], p[:, m:, 2][:, None, :], self.yy)
        self.yy.copy_(torch.where(hit[:, None, :], p[:, m:, 2][:, :, None], yy))
        self.rho.copy_(torch.where(hit, (1.0 / ys.clamp_min(self.eps))[:, None], self.rho))
        return p[:, :, 0]

    def _direction(self, grad: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
        """-H g for every job by one compact two-loop recursion (`LBFGS._direction`)."""
        m, k = self.history_size, grad.shape[0]
        order = (self._slots[None, :] + self.stored[:, None]) % m
        s_g, y_g = projections[:, :m].gather(1, order), projections[:, m:].gather(1, order)
        rho = self.rho.gather(1, order)
        rows, columns = order[:, :, None].expand(k, m, m), order[:, None, :].expand(k, m, m)
        upper = torch.triu(self.sy.gather(1, rows).gather(2, columns), diagonal=1)
        yy = self.yy.gather(1, rows).gather(2, columns)
        alpha = torch.linalg.solve_triangular(
            self._eye + rho[:, :, None] * upper, (rho * s_g)[:, :, None], upper=True
        )[:, :, 0]
        gamma = self.gamma[:, None]
        y_r0 = gamma * (y_g - torch.bmm(yy, alpha[:, :, None])[:, :, 0])
        lower = upper.transpose(1, 2)
        beta = torch.linalg.solve_triangular(
            self._eye + rho[:, :, None] * lower,
            (rho * (y_r0 + torch.bmm(lower, alpha[:, :, None])[:, :, 0]))[:, :, None],
            upper=False,
        )[:, :, 0]
        back = (self._slots[None, :] - self.stored[:, None]) % m
        coefficients = torch.cat(
            [(alpha - beta).gather(1, back), -gamma * alpha.gather(1, back)], 1
        )
        correction = self._matmul(coefficients[:, None, :], self.history)[:, 0]
        return -(gamma * grad + correction)

    def _armijo(self, flat: torch.Tensor, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slope = _dot(self.prev_grad, flat - self.prev_flat)
        decrease = loss <= self.base_loss + self.c1 * slope.clamp(max=0.0)
        return (self.steps == 0) | (torch.isfinite(loss) & decrease), slope

    def _first_step(self, grad: torch.Tensor) -> torch.Tensor:
        return self.rates * torch.clamp(1.0 / grad.abs().sum(1), max=1.0)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        """One evaluation's update of every job: `grad` (K, ...) and `loss` (K,) at the
        images' values."""
        k = self.param.shape[0]
        flat, grad = self.param.view(k, -1), grad.reshape(k, -1).to(self.dtype)
        if self.line_search == "none":
            self._fixed_step(flat, grad)
        else:
            assert loss is not None, "the line search needs each job's loss"
            self._search_step(flat, grad, loss.detach().reshape(k).to(self.dtype))

    @property
    def _rate(self) -> Tensor:
        return self.rates

    @staticmethod
    def _each(step_size: Tensor) -> Tensor:
        return step_size[:, None]

    def _full_step(
        self, direction: torch.Tensor, taken: torch.Tensor, paired: torch.Tensor
    ) -> torch.Tensor:
        """`LBFGS._full_step` per job."""
        grow = 2 * taken / direction.norm(dim=1).clamp_min(1e-30)
        unpaired = grow
        if self.bounds is not None:
            width = self.bounds[1] - self.bounds[0]
            unpaired = torch.minimum(grow, width / direction.abs().amax(1).clamp_min(1e-30))
        return torch.where(paired, torch.minimum(grow, self.rates), unpaired)

    def _search_step(self, flat: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor) -> None:
        """`LBFGS._search_step` (projected monotone Armijo search) for every job at once."""
        first = self.steps == 0
        accept, slope = self._armijo(flat, loss)
        free, base_free = self._free(flat, grad), self._free(self.prev_flat, self.prev_grad)
        free_grad = grad * free
        projections, paired = self._remember(
            flat, grad, accept, project=free_grad, free=free * base_free
        )
        new_direction = self._direction(free_grad, projections) * free
        descent = _dot(grad, new_direction) < 0
        new_direction = torch.where(
            descent[:, None], new_direction, -self.gamma[:, None] * free_grad
        )
        rejections = torch.where(accept, 0, self.rejections + 1)
        restart = rejections >= self.max_backtracks
        self.rho.mul_((~restart).to(self.dtype)[:, None])
        self.rejections.copy_(torch.where(restart, 0, rejections))
        shrunk = self._shrink(loss, slope)
        column = accept[:, None]
        self.prev_flat.copy_(torch.where(column, flat, self.prev_flat))
        self.prev_grad.copy_(torch.where(column, grad, self.prev_grad))
        self.base_loss.copy_(torch.where(accept, loss, self.base_loss))
        fresh = self._first_step(self.prev_grad)
        steepest = -self.prev_grad * torch.where(column, free, base_free)
        kept = torch.where(restart[:, None], steepest, self.direction)
        taken = self.trial_step * self.direction.norm(dim=1)
        self.direction.copy_(torch.where(column, new_direction, kept))
        full = self._full_step(new_direction, taken, paired)
        trial = torch.where(accept, torch.where(first, fresh, full), shrunk)
        self.trial_step.copy_(torch.where(restart, fresh, trial))
        self.accepted.copy_(accept)
        flat.copy_(self._project(self.prev_flat + self.trial_step[:, None] * self.direction))
        self.steps.add_(1)


def _adam_settings(optimizer: Adam) -> tuple | None:
    """What must be equal for jobs to share a `BatchedAdam` (None: not supported batched)."""
    group = optimizer.optimizer.param_groups[0]
    if group["amsgrad"] or group["maximize"] or group["weight_decay"] or len(group["params"]) != 1:
        return None
    param = optimizer.param
    return (tuple(group["betas"]), group["eps"], param.shape, param.dtype, param.device)


class BatchedAdam:
    """Adam for K jobs at once: the moments (K, ...) and step counts (K,) of the jobs' own
    torch Adam states stacked, each job's state and image pointing at its row (as
    `BatchedLBFGS` does), learning rates a (K,) tensor; the update is torch's capturable
    single-tensor Adam, so nothing is read back on the host."""

    def __init__(self, optimizers: Sequence[Adam]):
        self.optimizers = list(optimizers)
        first = optimizers[0]
        group = first.optimizer.param_groups[0]
        (self.beta1, self.beta2), self.eps = group["betas"], group["eps"]
        device, shape = first.param.device, (-1, *([1] * (first.param.dim() - 1)))
        self.param = torch.cat([o.param for o in optimizers])
        states = [self._state_of(o) for o in optimizers]
        rates = [o.optimizer.param_groups[0]["lr"] for o in optimizers]
        self.rates = torch.tensor(rates, dtype=torch.float32, device=device).view(shape)
        self.step_count = torch.stack([s["step"].to(device, torch.float32) for s in states])
        self.exp_avg = torch.cat([s["exp_avg"] for s in states])
        self.exp_avg_sq = torch.cat([s["exp_avg_sq"] for s in states])
        for k, optimizer in enumerate(optimizers):
            row = slice(k, k + 1)
            optimizer.param = self.param[row]
            own = {"step": self.step_count[k], "exp_avg": self.exp_avg[row]}
            own["exp_avg_sq"] = self.exp_avg_sq[row]
            optimizer.optimizer.param_groups[0]["params"] = [optimizer.param]
            optimizer.optimizer.state.clear()
            optimizer.optimizer.state[optimizer.param] = own

    @staticmethod
    def _state_of(optimizer: Adam) -> dict[str, torch.Tensor]:
        """The job's Adam state, or the state torch's Adam starts from."""
        state = optimizer.optimizer.state.get(optimizer.param)
        if state:
            return state
        param = optimizer.param
        zeros = torch.zeros_like(param, memory_format=torch.preserve_format)
        return {"step": torch.zeros(()), "exp_avg": zeros, "exp_avg_sq": zeros.clone()}

    @classmethod
    def adopt(cls, optimizers: Sequence[object]) -> BatchedAdam | None:
        """The batched Adam of these jobs, or None where they cannot share one."""
        if not optimizers or not all(isinstance(o, Adam) for o in optimizers):
            return None
        adams: list[Adam] = list(optimizers)  # type: ignore[arg-type]
        settings = {_adam_settings(o) for o in adams}
        if len(settings) > 1 or None in settings:
            return None
        return cls(adams)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        """One Adam update of every job from the batch's gradient (`loss` is not needed)."""
        grad = grad.reshape(self.param.shape)
        self.step_count.add_(1)
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        step = self.step_count.view(self.rates.shape)
        step_size_neg = (self.rates / (1 - self.beta1**step)).neg()
        bias_correction2_sqrt = (1 - self.beta2**step).sqrt()
        denom = (self.exp_avg_sq.sqrt() / (bias_correction2_sqrt * step_size_neg)).add_(
            self.eps / step_size_neg
        )
        self.param.addcdiv_(self.exp_avg, denom)
