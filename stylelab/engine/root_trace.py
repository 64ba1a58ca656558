"""tr((S^1/2 X S^1/2)^1/2), the cross term of the Gaussian W2 loss, at close to Gram's cost.

S is the style's covariance (ridge r included), fixed per stage; X = G G^T + r I is the
synthesis's, with G the centred (mask-weighted) features scaled so that G G^T is their
covariance, C x P for P pixels. Two ways to the same number, chosen per layer by shape:

- large side: the C x C matrix S^1/2 X S^1/2;
- small side, when P + k < C (k: rank of the style's covariance without ridge; deep layers of
  small images): with S = r I + V diag(l) V^T (V: C x k orthonormal), S^1/2 X S^1/2 =
  r^2 I + L L^T for L = [sqrt(r) V diag(l)^1/2, S^1/2 G], so its eigenvalues are r^2 (C - m
  times, m = k + P) and those of the m x m matrix r^2 I + L^T L: the trace of its root plus
  r (C - m) is the cross term, exactly, ridge and all.

Either root comes from `root_trace`: a coupled Newton-Schulz iteration whose forward gives the
trace of the square root and the inverse square root, and whose backward is the closed form
d tr(A^1/2) / dA = A^-1/2 / 2 (no autograd through the iterations). Matmuls only: no host
reads, static shapes, capturable in a CUDA graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# Relative error of the loss / feature gradient against float64 eigh (`python -m
# benchmarks.style_statistics --accuracy`: VGG-19 features of two photos at 64 and 128 px,
# random weights, approach2 and relu*_1 style layers, fp32): 15 iterations 2e-3..2e-1 /
# 4e-3..2e-1, as the autograd-through-15-iterations before on the large side and less on the
# small side; 12: 5e-3..5e-1, so fewer iterations do not pay; 18: 3e-4..6e-2. Most of it is
# eigenvalues below 2.25**-k of the norm, unresolved; in fp32, 25-30 iterations can blow up
# those that rounding made slightly negative. 15 keeps the loss values of before.
ROOT_TRACE_ITERATIONS = 15


def _eye_like(matrix: torch.Tensor) -> torch.Tensor:
    return torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)


def newton_schulz_root_trace(
    matrix: torch.Tensor, num_iters: int = ROOT_TRACE_ITERATIONS
) -> tuple[torch.Tensor, torch.Tensor]:
    """tr(A^1/2) (...,) and A^-1/2 (..., m, m) of symmetric PSD matrices A (..., m, m), by the
    coupled Newton-Schulz iteration on A / |A|_F: Y -> (A / |A|_F)^1/2, Z -> its inverse.
    Eigenvalues below about 2.25**-k |A|_F are not resolved (their roots come out too small),
    as in `statistics.sqrtm_newton_schulz`."""
    m = matrix.shape[-1]
    a = matrix.reshape(-1, m, m)
    norm = a.square().sum(dim=(-2, -1), keepdim=True).sqrt()
    norm = norm.clamp_min(torch.finfo(a.dtype).tiny)
    eye = _eye_like(a)
    y, z = a / norm, eye.expand_as(a)
    for _ in range(num_iters - 1):
        t = torch.baddbmm(1.5 * eye, z, y, alpha=-0.5)
        y, z = y @ t, t @ z
    t = torch.baddbmm(1.5 * eye, z, y, alpha=-0.5)  # the last: tr(y t) needs no matmul
    z, trace = t @ z, (y * t.transpose(-2, -1)).sum(dim=(-2, -1))
    scale = norm.sqrt()
    root_trace = trace * scale.flatten()
    inverse_root = 0.5 * (z + z.transpose(-2, -1)) / scale
    root_trace, inverse_root = root_trace.reshape(matrix.shape[:-2]), inverse_root.view_as(matrix)
    return root_trace, inverse_root


class _RootTrace(torch.autograd.Function):
    """tr(A^1/2) with the gradient A^-1/2 / 2 from the same iteration."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, num_iters: int) -> torch.Tensor:
        value, inverse_root = newton_schulz_root_trace(matrix, num_iters)
        ctx.save_for_backward(inverse_root)
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (inverse_root,) = ctx.saved_tensors
        return 0.5 * grad[..., None, None] * inverse_root, None


def root_trace(matrix: torch.Tensor, num_iters: int = ROOT_TRACE_ITERATIONS) -> torch.Tensor:
    """tr(A^1/2) per matrix of a batch (..., m, m) of symmetric PSD matrices, differentiable
    in closed form (see `newton_schulz_root_trace`)."""
    return _RootTrace.apply(matrix, num_iters)


class StyleSpectrum(NamedTuple):
    """The style's covariance without ridge as V diag(l) V^T, what the small side needs:
    `basis` V (C, k), `eigenvalues` l (k,), `coupling` sqrt(r l (r + l)) (k,) and `corner`
    r diag(l) (k, k)."""

    basis: torch.Tensor
    eigenvalues: torch.Tensor
    coupling: torch.Tensor
    corner: torch.Tensor


def style_spectrum(covariance: torch.Tensor, ridge: float) -> StyleSpectrum:
    """`StyleSpectrum` of a covariance (C, C) without ridge, kept to its numerical rank k
    (eigenvalues above C * eps * the largest). Target-building time (eigh synchronises);
    pass float64."""
    eigenvalues, basis = torch.linalg.eigh(covariance)
    tolerance = covariance.shape[-1] * torch.finfo(covariance.dtype).eps
    keep = eigenvalues > tolerance * eigenvalues.abs().max().clamp_min(ridge)
    eigenvalues, basis = eigenvalues[keep], basis[:, keep]
    coupling = (ridge * eigenvalues * (ridge + eigenvalues)).sqrt()
    return StyleSpectrum(basis, eigenvalues, coupling, torch.diag(ridge * eigenvalues))


def small_side_pays(channels: int, pixels: int, rank: int) -> bool:
    """Whether the (k + P) x (k + P) root is smaller than the C x C one."""
    return pixels + rank < channels


def small_side_matrix(scaled: torch.Tensor, style: StyleSpectrum, ridge: float) -> torch.Tensor:
    """r^2 I + L^T L (n, k + P, k + P) from G `scaled` (n, C, P):
    [[r diag(l), diag(coupling) V^T G], [., r G^T G + G^T V diag(l) V^T G]]."""
    n, k = scaled.shape[0], style.eigenvalues.shape[0]
    projected = style.basis.transpose(0, 1) @ scaled  # V^T G, (n, k, P)
    edge = style.coupling[:, None] * projected
    rest = ridge * scaled.transpose(1, 2) @ scaled
    rest = rest + projected.transpose(1, 2) @ (style.eigenvalues[:, None] * projected)
    top = torch.cat([style.corner.expand(n, k, k), edge], dim=-1)
    matrix = torch.cat([top, torch.cat([edge.transpose(1, 2), rest], dim=-1)], dim=-2)
    return matrix + ridge**2 * _eye_like(matrix)


def cross_trace_small(
    scaled: torch.Tensor,
    style: StyleSpectrum,
    ridge: float,
    num_iters: int = ROOT_TRACE_ITERATIONS,
) -> torch.Tensor:
    """tr((S^1/2 (G G^T + r I) S^1/2)^1/2) per image, from the small side."""
    matrix = small_side_matrix(scaled, style, ridge)
    return root_trace(matrix, num_iters) + ridge * (scaled.shape[1] - matrix.shape[-1])


def cross_trace_large(
    covariance: torch.Tensor, style_sqrt: torch.Tensor, num_iters: int = ROOT_TRACE_ITERATIONS
) -> torch.Tensor:
    """tr((S^1/2 X S^1/2)^1/2) per image from X (n, C, C), ridge included, and S^1/2."""
    return root_trace(style_sqrt @ covariance @ style_sqrt, num_iters)
