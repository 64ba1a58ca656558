"""Optimisers for pixels: a host-sync-free L-BFGS and Adam, behind one small interface.

`LBFGS` is torch.optim.LBFGS without line search (fixed step, as the PyTorch tutorial runs
it), one evaluation per step, rewritten so that a step never waits for the GPU: no Python
branch depends on a tensor value, and the two-loop recursion is done in the compact matrix
form (Byrd, Nocedal & Schnabel, 1994) as a few matrix-vector products over a fixed-size
history instead of hundreds of small kernels.
"""

from __future__ import annotations

from typing import Any

import torch


class LBFGS:
    """Limited-memory BFGS over one flat parameter tensor, one gradient evaluation per step."""

    def __init__(self, param: torch.Tensor, lr: float = 1.0, history_size: int = 100, eps: float = 1e-10):
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self.param, self.lr, self.history_size, self.eps = param, lr, history_size, eps
        n, m, device = param.numel(), history_size, param.device
        self.history = torch.zeros(2 * m, n, device=device)  # rows 0..m-1: s, rows m..2m-1: y
        self.sy = torch.zeros(m, m, device=device)  # sy[a, b] = s_a . y_b
        self.yy = torch.zeros(m, m, device=device)  # yy[a, b] = y_a . y_b
        self.rho = torch.zeros(m, device=device)
        self.gamma = torch.ones((), device=device)
        self.prev_flat = torch.zeros(n, device=device)
        self.prev_grad = torch.zeros(n, device=device)
        self.steps = 0  # host counters: known without asking the device
        self.filled = 0

    @property
    def s(self) -> torch.Tensor:
        return self.history[: self.history_size]

    @property
    def y(self) -> torch.Tensor:
        return self.history[self.history_size :]

    def _order(self) -> torch.Tensor:
        """Ring slots of the stored pairs, oldest first."""
        m, k = self.history_size, self.filled
        start = (self.steps - 1 - k) % m
        return (torch.arange(k, device=self.param.device) + start) % m

    def _remember(self, grad: torch.Tensor, flat: torch.Tensor) -> None:
        """Store the newest curvature pair (s, y); a pair with s.y <= eps gets rho = 0 (ignored)."""
        m = self.history_size
        slot = (self.steps - 1) % m
        s, y = flat - self.prev_flat, grad - self.prev_grad
        self.history[slot].copy_(s)
        self.history[m + slot].copy_(y)
        sy_row = self.y @ s  # s_new . y_b for every b (uses the new y too)
        sy_col = self.s @ y  # s_a . y_new
        yy_col = self.y @ y
        self.sy[slot] = sy_row
        self.sy[:, slot] = sy_col
        self.yy[slot] = yy_col
        self.yy[:, slot] = yy_col
        ys = sy_col[slot]
        valid = ys > self.eps
        self.rho[slot] = torch.where(valid, 1.0 / ys.clamp_min(self.eps), torch.zeros_like(ys))
        self.gamma = torch.where(valid, ys / (yy_col[slot] + 1e-30), self.gamma)
        self.filled = min(self.filled + 1, m)

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        """-H g by the compact two-loop recursion over the stored pairs."""
        order = self._order()
        projections = self.history @ grad
        s_g = projections[: self.history_size][order]
        y_g = projections[self.history_size :][order]
        rho = self.rho[order]
        upper = torch.triu(self.sy[order][:, order], diagonal=1)  # s_i . y_j for i < j
        eye = torch.eye(len(order), device=grad.device)
        alpha = torch.linalg.solve_triangular(
            eye + rho[:, None] * upper, (rho * s_g)[:, None], upper=True
        )[:, 0]
        y_r0 = self.gamma * (y_g - self.yy[order][:, order] @ alpha)
        beta = torch.linalg.solve_triangular(
            eye + rho[:, None] * upper.T, (rho * (y_r0 + upper.T @ alpha))[:, None], upper=False
        )[:, 0]
        coefficients = torch.zeros(2 * self.history_size, device=grad.device)
        coefficients[order] = alpha - beta
        coefficients[self.history_size + order] = -self.gamma * alpha
        return -(self.gamma * grad + coefficients @ self.history)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        """Move the parameter along the L-BFGS direction for the gradient at its current value."""
        flat, grad = self.param.view(-1), grad.reshape(-1).float()
        self.steps += 1
        if self.steps == 1:
            direction = -grad
            step_size = self.lr * torch.clamp(1.0 / grad.abs().sum(), max=1.0)
        else:
            self._remember(grad, flat)
            direction = self._direction(grad)
            step_size = torch.tensor(self.lr, device=flat.device)
        self.prev_flat.copy_(flat)
        self.prev_grad.copy_(grad)
        flat.add_(direction * step_size)

    def state_dict(self) -> dict[str, Any]:
        keys = ("history", "sy", "yy", "rho", "gamma", "prev_flat", "prev_grad")
        state: dict[str, Any] = {key: getattr(self, key).clone() for key in keys}
        state.update(steps=self.steps, filled=self.filled)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            current = getattr(self, key)
            setattr(self, key, value.to(current.device) if isinstance(value, torch.Tensor) else value)


class Adam:
    """torch.optim.Adam over the image, with the same `step(grad)` interface as `LBFGS`."""

    def __init__(self, param: torch.Tensor, lr: float = 0.02, betas: tuple[float, float] = (0.9, 0.999)):
        self.param = param
        fused = param.device.type == "cuda"
        self.optimizer = torch.optim.Adam([param], lr=lr, betas=betas, fused=fused or None)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        self.param.grad = grad.view_as(self.param)
        self.optimizer.step()
        self.param.grad = None

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def make_optimizer(name: str, param: torch.Tensor, lr: float, history_size: int = 100) -> LBFGS | Adam:
    """`lbfgs` or `adam` over `param`."""
    if name == "lbfgs":
        return LBFGS(param, lr=lr, history_size=history_size)
    if name == "adam":
        return Adam(param, lr=lr)
    raise ValueError(f"unknown optimizer '{name}': use lbfgs or adam")
