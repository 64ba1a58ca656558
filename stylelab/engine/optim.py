"""Optimisers for pixels: a host-sync-free, graph-capturable L-BFGS and Adam, one interface.

`LBFGS` is torch.optim.LBFGS without line search (fixed step, as the PyTorch tutorial runs
it), one evaluation per step, rewritten so that a step never waits for the GPU and always
launches the same kernels on tensors of the same shapes: all `history_size` slots exist from
the start (an empty slot has s = y = 0 and rho = 0 and contributes nothing), the step counter
and the ring pointer live on the device, and the first step and rejected curvature pairs are
handled by masks instead of branches. So a whole step can be captured in a CUDA graph. The
two-loop recursion is done in the compact matrix form (Byrd, Nocedal & Schnabel, 1994): two
passes over the history instead of hundreds of small kernels.
"""

from __future__ import annotations

from typing import Any

import torch

HISTORY_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_STATE_KEYS = ("history", "sy", "yy", "rho", "gamma", "prev_flat", "prev_grad", "steps", "stored")


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


class LBFGS:
    """Limited-memory BFGS over one flat parameter tensor, one gradient evaluation per step.

    `history_dtype="bf16"` stores the s/y history in bfloat16 (half the memory, for large
    images); dot products are still accumulated in fp32.
    """

    def __init__(
        self,
        param: torch.Tensor,
        lr: float = 1.0,
        history_size: int = 100,
        eps: float = 1e-10,
        history_dtype: str = "fp32",
    ):
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        if history_dtype not in HISTORY_DTYPES:
            raise ValueError(f"unknown history_dtype '{history_dtype}': use fp32 or bf16")
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

    def _matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _matmul(a, b, self.history.dtype, self.dtype, self._out_dtype)

    def _remember(self, flat: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Store the newest pair (s, y) if s.y > eps (and this is not the first step).

        Returns history @ grad (the projections the direction needs), from the same pass over
        the history that updates the s.y and y.y tables.
        """
        m = self.history_size
        s, y = flat - self.prev_flat, grad - self.prev_grad
        ys, yy_new = torch.dot(s, y), torch.dot(y, y)
        valid = (ys > self.eps) & (self.steps > 0)
        slot, low = self.stored % m, self.history.dtype
        rows = torch.stack([slot, slot + m])
        new = torch.where(valid, torch.stack([s.to(low), y.to(low)]), self.history[rows])
        self.history.index_copy_(0, rows, new)
        p = self._matmul(self.history, torch.stack([v.to(low) for v in (grad, s, y)], dim=1))
        hit = (self._slots == slot) & valid  # one-hot mask of the slot written
        sy = torch.where(hit[:, None], p[m:, 1][None, :], self.sy)  # row: s_new . y_b
        self.sy.copy_(torch.where(hit[None, :], p[:m, 2][:, None], sy))  # column: s_a . y_new
        yy = torch.where(hit[:, None], p[m:, 2][None, :], self.yy)
        self.yy.copy_(torch.where(hit[None, :], p[m:, 2][:, None], yy))
        self.rho.copy_(torch.where(hit, 1.0 / ys.clamp_min(self.eps), self.rho))
        self.gamma.copy_(torch.where(valid, ys / (yy_new + 1e-30), self.gamma))
        self.stored.add_(valid.long())
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

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        """Move the parameter along the L-BFGS direction for the gradient at its current value."""
        flat, grad = self.param.view(-1), grad.reshape(-1).to(self.dtype)
        projections = self._remember(flat, grad)
        direction = self._direction(grad, projections)
        first = self.lr * torch.clamp(1.0 / grad.abs().sum(), max=1.0)  # torch's first step
        step_size = torch.where(self.steps == 0, first, self.lr)
        self.prev_flat.copy_(flat)
        self.prev_grad.copy_(grad)
        flat.add_(direction * step_size)
        self.steps.add_(1)

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key).clone() for key in _STATE_KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy a state in place (tensors keep their addresses, so a captured graph stays valid)."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"not an L-BFGS state of this version (missing {', '.join(missing)})")
        for key in _STATE_KEYS:
            current, value = getattr(self, key), state[key]
            if value.shape != current.shape:
                raise ValueError(
                    f"L-BFGS state '{key}' has shape {tuple(value.shape)}, expected "
                    f"{tuple(current.shape)} (another image size or history_size?)"
                )
            current.copy_(value)


class Adam:
    """torch.optim.Adam over the image, with the same `step(grad)` interface as `LBFGS`.

    `capturable=True` (CUDA only) keeps the step count on the device, for CUDA graphs.
    """

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
    def step(self, grad: torch.Tensor) -> None:
        self.param.grad = grad.reshape(self.param.shape).contiguous()  # fused Adam: same strides
        self.optimizer.step()
        self.param.grad = None

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def make_optimizer(
    name: str,
    param: torch.Tensor,
    lr: float,
    history_size: int = 100,
    history_dtype: str = "fp32",
    capturable: bool = False,
) -> LBFGS | Adam:
    """`lbfgs` or `adam` over `param` (`capturable`: Adam's state ready for CUDA graphs)."""
    if name == "lbfgs":
        return LBFGS(param, lr=lr, history_size=history_size, history_dtype=history_dtype)
    if name == "adam":
        return Adam(param, lr=lr, capturable=capturable)
    raise ValueError(f"unknown optimizer '{name}': use lbfgs or adam")
