"""Style statistics the objective can choose per term: Gram matrices or Gaussian Wasserstein-2.

Each statistic is used in two phases:

- target-building time (once per stage): `measure` each style image's features (optionally
  inside a mask in the style's own frame), `blend` the measurements of several styles with
  their weights, and build the loss module with `loss(target, mask)`; everything fixed per
  stage (target, its matrix square root, the synthesis-frame mask) lives in module buffers;
- per evaluation: `module(features) -> scalar`, pure tensor arithmetic and matmuls, no host
  synchronisation, safe to capture in a CUDA graph.

Masks are (1 or N, 1, H, W) weights at the layer's resolution (see `stylelab.engine.masks`).
The Wasserstein-2 loss follows crowsonkb/style-transfer-pytorch: squared W2 distance between
Gaussians fitted to the features, divided by the number of channels, with a small ridge on
both covariances; its cross term's root comes from `root_trace` (Newton-Schulz forward,
closed-form gradient, on the smaller side of each layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from stylelab.engine.losses import gram_matrix
from stylelab.engine.root_trace import (
    ROOT_TRACE_ITERATIONS,
    StyleSpectrum,
    cross_trace_large,
    cross_trace_small,
    small_side_pays,
    style_spectrum,
)

DEFAULT_RIDGE = 1e-4
DEFAULT_NS_ITERATIONS = ROOT_TRACE_ITERATIONS


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (for gradient checks and targets); everything else runs in fp32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _coverage_ratio(mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(H*W) / sum(weights) per mask, shaped (M, 1): exactly 1.0 for an all-ones mask, so
    `unmasked statistic * ratio` reproduces the unmasked statistic bit for bit."""
    pixels = mask.shape[-2] * mask.shape[-1]
    return pixels / weights.sum(dim=-1).clamp_min(torch.finfo(weights.dtype).tiny)


def _check_mask(features: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != features.shape[-2:]:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit features of shape "
            f"{tuple(features.shape)}: propagate the mask to this layer (masks.layer_masks)"
        )


def guided_gram_matrix(features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix of features * mask, normalised by C * sum(mask**2) (Gatys et al. 2017).

    An all-ones mask gives exactly `gram_matrix(features)`; regions with mask 0 contribute
    nothing. Computed in fp32 with autocast off, like `gram_matrix`.
    """
    if mask is None:
        return gram_matrix(features)
    _check_mask(features, mask)
    mask = mask.to(_compute_dtype(features))
    gram = gram_matrix(features.to(mask.dtype) * mask)  # divided by C * H * W
    energy = mask.square().flatten(1)
    return gram * _coverage_ratio(mask, energy).unsqueeze(-1)


@dataclass(frozen=True)
class FeatureMoments:
    """Mean (N, C) and raw second moment E[f f^T] (N, C, C) of a layer's feature vectors.

    Raw moments, unlike covariances, combine linearly: the moments of a weighted mixture of
    styles are the weighted means of their moments.
    """

    mean: torch.Tensor
    second_moment: torch.Tensor

    def covariance(self) -> torch.Tensor:
        return self.second_moment - self.mean.unsqueeze(-1) * self.mean.unsqueeze(-2)


def _flat_and_weights(
    features: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Flattened features (N, C, HW), the mask as (M, 1, HW) weights and its coverage ratio."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w).to(_compute_dtype(features))
    if mask is None:
        return flat, None, None
    _check_mask(features, mask)
    weights = mask.reshape(mask.shape[0], 1, h * w).to(flat.dtype)
    return flat, weights, _coverage_ratio(mask, weights.flatten(1))


def _weighted_mean(
    flat: torch.Tensor, weights: torch.Tensor | None, ratio: torch.Tensor | None
) -> torch.Tensor:
    weighted = flat if weights is None else flat * weights
    mean = weighted.sum(dim=-1) / flat.shape[-1]
    return mean if ratio is None else mean * ratio


def _weighted_outer(
    left: torch.Tensor,
    right: torch.Tensor,
    weights: torch.Tensor | None,
    ratio: torch.Tensor | None,
) -> torch.Tensor:
    """sum_p w_p left_p right_p^T / sum_p w_p, (N, C, C)."""
    weighted = left if weights is None else left * weights
    outer = torch.bmm(weighted, right.transpose(1, 2)) / left.shape[-1]
    return outer if ratio is None else outer * ratio.unsqueeze(-1)


def feature_moments(features: torch.Tensor, mask: torch.Tensor | None = None) -> FeatureMoments:
    """Mean and raw second moment of the feature vectors, weighted by `mask` if given.

    Weights are the mask values (a soft region membership); an all-ones mask gives exactly the
    unmasked moments.
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat, weights, ratio = _flat_and_weights(features, mask)
        mean = _weighted_mean(flat, weights, ratio)
        return FeatureMoments(mean, _weighted_outer(flat, flat, weights, ratio))


def feature_mean_and_covariance(
    features: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean (N, C) and covariance (N, C, C), from centred features (no cancellation)."""
    with torch.autocast(device_type=features.device.type, enabled=False):
        mean, centred, weights, ratio = _centred(features, mask)
        return mean, _weighted_outer(centred, centred, weights, ratio)


def _centred(
    features: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Weighted mean (N, C), centred flat features (N, C, HW), mask weights and coverage."""
    flat, weights, ratio = _flat_and_weights(features, mask)
    mean = _weighted_mean(flat, weights, ratio)
    return mean, flat - mean.unsqueeze(-1), weights, ratio


def _covariance_factor(
    centred: torch.Tensor, weights: torch.Tensor | None, ratio: torch.Tensor | None
) -> torch.Tensor:
    """G (N, C, HW) with G G^T the weighted covariance: centred * sqrt(w / sum(w)); an
    all-ones mask gives exactly the unmasked centred / sqrt(HW)."""
    if weights is not None and ratio is not None:
        centred = centred * (weights * ratio.reshape(-1, 1, 1)).sqrt()
    return centred / math.sqrt(centred.shape[-1])


def blend_grams(grams: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Target of a style blend for Gram terms: the weighted sum of the styles' Gram matrices."""
    _check_blend(grams, weights)
    return sum((w * g for g, w in zip(grams, weights, strict=True)), torch.zeros_like(grams[0]))


def blend_moments(moments: Sequence[FeatureMoments], weights: Sequence[float]) -> FeatureMoments:
    """Target of a style blend for W2 terms: the moments of the mixture of the styles' feature
    distributions (weights normalised to sum to 1), i.e. weighted means of means and of raw
    second moments; the Gaussian fitted to it has the mixture's mean and covariance."""
    _check_blend(moments, weights)
    shares = normalise_weights(weights)
    means = [w * m.mean for m, w in zip(moments, shares, strict=True)]
    seconds = [w * m.second_moment for m, w in zip(moments, shares, strict=True)]
    return FeatureMoments(sum(means[1:], means[0]), sum(seconds[1:], seconds[0]))


def normalise_weights(weights: Sequence[float]) -> list[float]:
    """`weights` scaled to sum to 1, without overflow (divided by the largest first: 1e308 each
    gives equal shares, not inf / inf); they must be finite, >= 0 and not all 0."""
    if not weights or any(not (math.isfinite(w) and w >= 0) for w in weights) or max(weights) <= 0:
        raise ValueError(
            f"blend weights {list(weights)} must be finite and >= 0 with a positive sum"
        )
    top = float(max(weights))
    scaled = [float(w) / top for w in weights]
    total = sum(scaled)
    return [w / total for w in scaled]


def _check_blend(targets: Sequence[object], weights: Sequence[float]) -> None:
    if not targets or len(targets) != len(weights):
        raise ValueError(f"{len(targets)} style targets given with {len(weights)} blend weights")


def sqrtm_newton_schulz(
    matrix: torch.Tensor, num_iters: int = DEFAULT_NS_ITERATIONS
) -> torch.Tensor:
    """Square root of symmetric positive semi-definite matrices (..., C, C) by the coupled
    Newton-Schulz iteration on the Frobenius-normalised matrix: matmuls only, so no host
    synchronisation, and differentiable by autograd. k iterations resolve eigenvalues down to
    about 2.25**-k of the Frobenius norm (smaller ones come out too small); in fp32, many more
    than 20 iterations can blow up eigenvalues that rounding made slightly negative."""
    norm = matrix.square().sum(dim=(-2, -1), keepdim=True).sqrt()
    norm = norm.clamp_min(torch.finfo(matrix.dtype).tiny)
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    y, z = matrix / norm, eye.expand_as(matrix)
    for _ in range(num_iters):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    return y * norm.sqrt()


def sqrtm_eigh(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of symmetric PSD matrices via eigh (negative rounding noise clamped to 0).
    Synchronises on CUDA: for targets, computed once per stage, not per evaluation."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    scaled = eigenvectors * eigenvalues.clamp_min(0).sqrt().unsqueeze(-2)
    return scaled @ eigenvectors.transpose(-2, -1)


def _trace(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.diagonal(dim1=-2, dim2=-1).sum(-1)


def gaussian_w2_squared(
    mean_a: torch.Tensor,
    cov_a: torch.Tensor,
    mean_b: torch.Tensor,
    cov_b: torch.Tensor,
    cov_b_sqrt: torch.Tensor,
    num_iters: int = DEFAULT_NS_ITERATIONS,
) -> torch.Tensor:
    """Squared Wasserstein-2 distance between N(mean_a, cov_a) and N(mean_b, cov_b), per batch
    element: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_b^1/2 S_a S_b^1/2)^1/2). `cov_b_sqrt` is
    S_b^1/2 (fixed side, precomputed); the cross term uses Newton-Schulz."""
    cross = sqrtm_newton_schulz(cov_b_sqrt @ cov_a @ cov_b_sqrt, num_iters)
    mean_term = (mean_a - mean_b).square().sum(-1)
    return mean_term + _trace(cov_a) + _trace(cov_b) - 2 * _trace(cross)


def _optional_buffer(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
    module.register_buffer(name, None if tensor is None else tensor.detach().float())


class GramStyleLoss(nn.Module):
    """MSE between the (guided) Gram matrix of features and a fixed target Gram matrix.

    Without a mask it computes exactly what `losses.StyleLoss` does, from a target Gram
    matrix (e.g. a blend) instead of target features.
    """

    target: torch.Tensor  # buffers
    mask: torch.Tensor | None

    def __init__(self, target: torch.Tensor, mask: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("target", target.detach().float())
        _optional_buffer(self, "mask", mask)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        gram = guided_gram_matrix(features, self.mask)
        return F.mse_loss(gram, self.target.expand(gram.shape[0], -1, -1))


class W2StyleLoss(nn.Module):
    """Squared W2 distance / C between Gaussians fitted to the features and to a fixed target.

    `target` is the style's features (N=1) or `FeatureMoments` (e.g. a blend). Everything about
    the target (mean, covariance + ridge, its trace, square root and spectrum; eigh, float64)
    is computed once here; `forward` uses matmuls only, and takes the cross term's root on
    the smaller side per layer (`root_trace`). `mask` weights the synthesis's feature vectors.
    The batch is handled like `StyleLoss`: each image against the one target, losses averaged.
    """

    ridge_eye: torch.Tensor
    target_mean: torch.Tensor
    target_trace: torch.Tensor
    target_cov_sqrt: torch.Tensor
    target_eigenvalues: torch.Tensor  # and the rest of the `StyleSpectrum` as target_<field>
    mask: torch.Tensor | None

    def __init__(
        self,
        target: torch.Tensor | FeatureMoments,
        mask: torch.Tensor | None = None,
        *,
        ridge: float = DEFAULT_RIDGE,
        num_iters: int = ROOT_TRACE_ITERATIONS,
    ):
        super().__init__()
        if not isinstance(target, FeatureMoments):
            target = feature_moments(target.detach().double())
        covariance = target.covariance().double()
        covariance = 0.5 * (covariance + covariance.transpose(-2, -1))
        eye = torch.eye(covariance.shape[-1], dtype=torch.float64, device=covariance.device)
        self.ridge, self.num_iters = ridge, num_iters
        self.register_buffer("ridge_eye", (ridge * eye).float())
        self.register_buffer("target_mean", target.mean.detach().float())
        self.register_buffer("target_trace", _trace(covariance + ridge * eye).float())
        self.register_buffer("target_cov_sqrt", sqrtm_eigh(covariance + ridge * eye).float())
        spectrum = style_spectrum(covariance.squeeze(0), ridge)
        for name, tensor in spectrum._asdict().items():
            self.register_buffer(f"target_{name}", tensor.float())
        _optional_buffer(self, "mask", mask)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            mean, centred, weights, ratio = _centred(features, self.mask)
            channels, pixels = centred.shape[-2:]
            small = small_side_pays(channels, pixels, self.target_eigenvalues.shape[0])
            side = self._small_side if small else self._large_side
            cov_trace, cross = side(centred, weights, ratio)
            mean_term = (mean - self.target_mean.to(mean.dtype)).square().sum(-1)
            distance = mean_term + cov_trace + self.target_trace.to(mean.dtype) - 2 * cross
            return (distance / channels).mean()

    def _small_side(
        self, centred: torch.Tensor, weights: torch.Tensor | None, ratio: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tr(X) and the cross term from G (C x P) and the style's spectrum (P + k < C)."""
        factor = _covariance_factor(centred, weights, ratio)
        spectrum = StyleSpectrum(
            *(getattr(self, f"target_{name}").to(factor.dtype) for name in StyleSpectrum._fields)
        )
        cross = cross_trace_small(factor, spectrum, self.ridge, self.num_iters)
        return factor.square().sum(dim=(-2, -1)) + self.ridge * centred.shape[1], cross

    def _large_side(
        self, centred: torch.Tensor, weights: torch.Tensor | None, ratio: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tr(X) and the cross term from the C x C covariance X and S^1/2."""
        covariance = _weighted_outer(centred, centred, weights, ratio)
        covariance = covariance + self.ridge_eye.to(centred.dtype)
        sqrt = self.target_cov_sqrt.to(centred.dtype)
        return _trace(covariance), cross_trace_large(covariance, sqrt, self.num_iters)


class StyleStatistic(Protocol):
    """What a style term needs from its statistic: measure targets, blend them, build a loss."""

    @property
    def name(self) -> str: ...  # read only: a class attribute fits (the statistics' ClassVar)

    def measure(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> object: ...

    def blend(self, targets: Sequence, weights: Sequence[float]) -> object: ...

    def loss(self, target, mask: torch.Tensor | None = None) -> nn.Module: ...


@dataclass(frozen=True)
class GramStatistic:
    """Gram matrices (Gatys et al. 2015), guided by masks as in Gatys et al. (2017)."""

    name: ClassVar[str] = "gram"

    def measure(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return guided_gram_matrix(features.detach(), mask)

    def blend(self, targets: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        return blend_grams(targets, weights)

    def loss(self, target: torch.Tensor, mask: torch.Tensor | None = None) -> GramStyleLoss:
        return GramStyleLoss(target, mask)


@dataclass(frozen=True)
class W2Statistic:
    """Gaussian Wasserstein-2 (mean and covariance), targets as mixture moments in float64."""

    name: ClassVar[str] = "w2"
    ridge: float = DEFAULT_RIDGE
    num_iters: int = ROOT_TRACE_ITERATIONS

    def measure(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> FeatureMoments:
        return feature_moments(features.detach().double(), mask)

    def blend(self, targets: Sequence[FeatureMoments], weights: Sequence[float]) -> FeatureMoments:
        return blend_moments(targets, weights)

    def loss(self, target: FeatureMoments, mask: torch.Tensor | None = None) -> W2StyleLoss:
        return W2StyleLoss(target, mask, ridge=self.ridge, num_iters=self.num_iters)


STYLE_STATISTICS: dict[str, Callable[..., StyleStatistic]] = {
    "gram": GramStatistic,
    "w2": W2Statistic,
}


def style_statistic(name: str, **options: float) -> StyleStatistic:
    """`gram` or `w2` (options: ridge, num_iters) by name, for a term's config."""
    if name not in STYLE_STATISTICS:
        raise ValueError(
            f"unknown style statistic '{name}': use one of {', '.join(STYLE_STATISTICS)}"
        )
    return STYLE_STATISTICS[name](**options)


def blended_style_loss(
    statistic: StyleStatistic,
    style_features: Sequence[torch.Tensor],
    weights: Sequence[float],
    style_masks: Sequence[torch.Tensor | None] | None = None,
    mask: torch.Tensor | None = None,
) -> nn.Module:
    """One layer's style loss against a blend of styles (each optionally inside a style-frame
    mask), guided by `mask` in the synthesis frame. Target-building time, once per stage."""
    style_masks = list(style_masks) if style_masks is not None else [None] * len(style_features)
    targets = [
        statistic.measure(features, style_mask)
        for features, style_mask in zip(style_features, style_masks, strict=True)
    ]
    return statistic.loss(statistic.blend(targets, weights), mask)
