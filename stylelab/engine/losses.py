"""Loss functions as small modules: content (feature MSE), style (Gram MSE), total variation.

Conventions follow the PyTorch tutorial the write-up builds on, so `style_weight=1e6` means
what it means there: Gram matrices are normalised by C*H*W, each loss is a mean squared error,
and per-layer losses are summed (each with weight 1 unless given). `stylelab.engine.terms`
turns them into the named, weighted terms of an objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) Gram matrices divided by C*H*W, computed in fp32 (float64
    stays float64: the evaluation protocol's)."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    flat = flat if flat.dtype == torch.float64 else flat.float()
    # Autocast would run bmm in bf16/fp16 whatever the input dtype: switch it off here.
    with torch.autocast(device_type=features.device.type, enabled=False):
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


class ContentLoss(nn.Module):
    """Mean squared error between features and fixed target features."""

    target: torch.Tensor  # a buffer

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.register_buffer("target", target.detach().float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(features.float(), self.target)


class StyleLoss(nn.Module):
    """Mean squared error between the Gram matrix of features and a fixed target Gram matrix.

    The target is the Gram matrix of `target_features`, or `target_gram` itself (e.g. a blend of
    several styles' Gram matrices).
    """

    target: torch.Tensor  # a buffer

    def __init__(
        self, target_features: torch.Tensor | None = None, target_gram: torch.Tensor | None = None
    ):
        super().__init__()
        if target_gram is None and target_features is not None:
            target = gram_matrix(target_features.detach())
        elif target_gram is not None and target_features is None:
            target = target_gram
        else:
            raise ValueError("give exactly one of target_features and target_gram")
        self.register_buffer("target", target.detach().float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(gram_matrix(features), self.target.expand(features.shape[0], -1, -1))


TV_KINDS = ("l1", "l2")


class TVLoss(nn.Module):
    """Anisotropic total variation of neighbouring pixels' differences, averaged over x and y.

    `l1` (default, as d2l writes it): mean absolute difference; not differentiable where
    neighbours are equal, so L-BFGS sees kinks. `l2` (as jcjohnson's neural-style): mean squared
    difference; smooth, penalises edges more and flat noise less.
    """

    def __init__(self, kind: str = "l1"):
        super().__init__()
        if kind not in TV_KINDS:
            raise ValueError(f"unknown tv_loss '{kind}': use l1 or l2")
        self.kind = kind

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dx = image[..., :, 1:] - image[..., :, :-1]
        dy = image[..., 1:, :] - image[..., :-1, :]
        if self.kind == "l2":
            return 0.5 * (dx.square().mean() + dy.square().mean())
        return 0.5 * (dx.abs().mean() + dy.abs().mean())
