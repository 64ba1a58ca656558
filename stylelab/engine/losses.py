"""Gatys losses as small modules: content (feature MSE), style (Gram MSE), total variation.

Conventions follow the PyTorch tutorial the write-up builds on, so `style_weight=1e6` means
what it means there: Gram matrices are normalised by C*H*W, each loss is a mean squared error,
and per-layer losses are summed (each with weight 1 unless given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stylelab.engine.features import VGGFeatures, layer_name


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) Gram matrices divided by C*H*W, computed in fp32."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w).float()
    # Autocast would run bmm in bf16/fp16 whatever the input dtype: switch it off here.
    with torch.autocast(device_type=features.device.type, enabled=False):
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


class ContentLoss(nn.Module):
    """Mean squared error between features and fixed target features."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.register_buffer("target", target.detach().float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(features.float(), self.target)


class StyleLoss(nn.Module):
    """Mean squared error between the Gram matrix of features and a fixed target Gram matrix."""

    def __init__(self, target_features: torch.Tensor):
        super().__init__()
        self.register_buffer("target", gram_matrix(target_features.detach()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(gram_matrix(features), self.target.expand(features.shape[0], -1, -1))


class TVLoss(nn.Module):
    """Anisotropic total variation: mean absolute difference of neighbouring pixels."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean()
        dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean()
        return 0.5 * (dx + dy)


class GatysLoss(nn.Module):
    """Weighted sum of content, style and TV losses over chosen VGG layers.

    Targets are computed once, at construction. `forward(image)` returns a dict of scalar
    tensors: `total`, `content`, `style`, `tv` (each already weighted, so they add up to
    `total`) and one weighted entry per layer, e.g. `style/conv1_1`, `content/conv4_4`.
    """

    def __init__(
        self,
        encoder: VGGFeatures,
        content_image: torch.Tensor,
        style_image: torch.Tensor,
        content_layers: Sequence[int],
        style_layers: Sequence[int],
        content_weight: float = 1.0,
        style_weight: float = 1e6,
        tv_weight: float = 0.0,
        content_layer_weights: Sequence[float] | None = None,
        style_layer_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.content_weight, self.style_weight, self.tv_weight = (
            content_weight,
            style_weight,
            tv_weight,
        )
        self.content_layers, self.style_layers = list(content_layers), list(style_layers)
        self.content_layer_weights = _layer_weights(
            content_layer_weights, self.content_layers, "content"
        )
        self.style_layer_weights = _layer_weights(style_layer_weights, self.style_layers, "style")
        with torch.no_grad():
            content_features = encoder(content_image)
            style_features = encoder(style_image)
        self.content_losses = nn.ModuleDict(
            {str(i): ContentLoss(content_features[i]) for i in self.content_layers}
        )
        self.style_losses = nn.ModuleDict(
            {str(i): StyleLoss(style_features[i]) for i in self.style_layers}
        )
        self.tv_loss = TVLoss()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(image)
        terms: dict[str, torch.Tensor] = {}
        content = _weighted_sum(
            terms,
            "content",
            self.content_losses,
            self.content_layer_weights,
            self.content_weight,
            features,
        )
        style = _weighted_sum(
            terms, "style", self.style_losses, self.style_layer_weights, self.style_weight, features
        )
        tv = self.tv_weight * self.tv_loss(image.float()) if self.tv_weight else image.new_zeros(())
        terms.update(content=content, style=style, tv=tv, total=content + style + tv)
        return terms


def _layer_weights(
    weights: Sequence[float] | None, layers: Sequence[int], kind: str
) -> list[float]:
    if weights is None or len(weights) == 0:
        return [1.0] * len(layers)
    if len(weights) != len(layers):
        raise ValueError(
            f"{len(weights)} {kind} layer weights given for {len(layers)} {kind} layers"
        )
    return [float(w) for w in weights]


def _weighted_sum(
    terms: dict[str, torch.Tensor],
    kind: str,
    losses: Mapping[str, nn.Module],
    layer_weights: Sequence[float],
    weight: float,
    features: Mapping[int, torch.Tensor],
) -> torch.Tensor:
    total = torch.zeros((), device=next(iter(features.values())).device)
    for (key, loss), layer_weight in zip(losses.items(), layer_weights, strict=True):
        value = weight * layer_weight * loss(features[int(key)])
        terms[f"{kind}/{layer_name(int(key))}"] = value
        total = total + value
    return total
