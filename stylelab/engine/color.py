"""Colour preservation after Gatys, Bethge, Hertzmann & Shechtman (2016), "Preserving Color in
Neural Artistic Style Transfer", plus jcjohnson's `-original_colors 1`.

Images are float tensors (N, 3, H, W) in [0, 1]. Three modes:

- `histogram`: before synthesis, map the style image's colours affinely onto the content's
  colour distribution (`match_color_histogram`), then transfer as usual.
- `luminance`: synthesise on luminance only: the content's Y and the style's Y (matched to the
  content's luminance mean and standard deviation), each replicated to three channels for VGG;
  afterwards recombine the synthesised Y with the content's I and Q channels.
- `original`: transfer as usual, then recombine the result's Y with the content's I and Q.

`prepare_color_inputs` (per stage, at target-building time) and `finish_color` (on the result)
wrap the three modes; the functions below them are the pieces.
"""

from __future__ import annotations

import torch

COLOR_MODES = ("none", "histogram", "luminance", "original")
HISTOGRAM_METHODS = ("cholesky", "eigen")

# The NTSC RGB -> YIQ matrix as scikit-image defines it (skimage.color.rgb2yiq); the inverse is
# computed exactly from it (in float64) rather than taken from a rounded published table.
YIQ_FROM_RGB = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [0.59590059, -0.27455667, -0.32134392],
        [0.21153661, -0.52273617, 0.31119955],
    ],
    dtype=torch.float64,
)
RGB_FROM_YIQ = torch.linalg.inv(YIQ_FROM_RGB)


def _apply_channel_matrix(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Multiply every pixel's 3-vector of an (N, 3, H, W) image by a 3x3 matrix."""
    result = torch.einsum("ij,njhw->nihw", matrix.to(torch.float64), image.to(torch.float64))
    return result.to(image.dtype)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> YIQ (Y in [0, 1]; I and Q signed)."""
    return _apply_channel_matrix(YIQ_FROM_RGB, image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) YIQ -> RGB, the exact inverse of `rgb_to_yiq` (not clamped)."""
    return _apply_channel_matrix(RGB_FROM_YIQ, image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) NTSC luminance Y."""
    return rgb_to_yiq(image)[:, :1]


def gray_to_rgb(luma: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luminance replicated to (N, 3, H, W), the input VGG needs."""
    return luma.expand(-1, 3, -1, -1).contiguous()


def match_luminance(style_luma: torch.Tensor, content_luma: torch.Tensor) -> torch.Tensor:
    """y' = sigma_c / sigma_s * (y - mu_s) + mu_c, statistics per image over all pixels.

    A flat style (sigma_s = 0) gets the content's mean and no variation, not a division by zero.
    """
    mu_s, sigma_s = _mean_std(style_luma)
    mu_c, sigma_c = _mean_std(content_luma)
    scale = sigma_c / sigma_s.clamp_min(1e-8)
    return scale * (style_luma - mu_s) + mu_c


def _mean_std(luma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = luma.reshape(luma.shape[0], -1).to(torch.float64)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    shape = (-1, 1, 1, 1)
    return mean.view(shape).to(luma.dtype), std.view(shape).to(luma.dtype)


def combine_luminance(luma: torch.Tensor, chroma_source: torch.Tensor) -> torch.Tensor:
    """RGB image with Y from `luma` (N, 1, H, W) and I, Q from the RGB `chroma_source`.

    Not clamped: pixels out of the RGB gamut come back outside [0, 1] (see `finish_color`).
    """
    iq = rgb_to_yiq(chroma_source)[:, 1:]
    return yiq_to_rgb(torch.cat([luma.to(iq.dtype), iq], dim=1))


def color_statistics(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean (N, 3) and covariance (N, 3, 3) of the pixels' RGB values, in float64."""
    flat = image.reshape(image.shape[0], 3, -1).to(torch.float64)
    mean = flat.mean(dim=2)
    centred = flat - mean.unsqueeze(2)
    covariance = centred @ centred.transpose(1, 2) / flat.shape[2]
    return mean, covariance


def _with_ridge(covariance: torch.Tensor, relative_ridge: float) -> torch.Tensor:
    """Add ridge * (mean eigenvalue) + 1e-12 to the diagonal: positive definite, same scale."""
    eye = torch.eye(3, dtype=covariance.dtype, device=covariance.device)
    trace = covariance.diagonal(dim1=-2, dim2=-1).sum(-1)
    ridge = relative_ridge * trace / 3 + 1e-12
    return covariance + ridge[:, None, None] * eye


def _symmetric_power(matrix: torch.Tensor, power: float) -> torch.Tensor:
    """matrix ** power for symmetric positive definite matrices via eigendecomposition."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    scaled = eigenvectors * eigenvalues.clamp_min(1e-12).pow(power).unsqueeze(-2)
    return scaled @ eigenvectors.transpose(-2, -1)


def color_transfer_matrix(
    source_cov: torch.Tensor, target_cov: torch.Tensor, method: str = "cholesky"
) -> torch.Tensor:
    """A with A @ source_cov @ A.T = target_cov: `cholesky` L_t L_s^-1, `eigen` S_t^1/2 S_s^-1/2."""
    if method == "cholesky":
        source_chol = torch.linalg.cholesky(source_cov)
        target_chol = torch.linalg.cholesky(target_cov)
        # X L_s = L_t, a triangular solve instead of an explicit inverse.
        return torch.linalg.solve_triangular(source_chol, target_chol, upper=False, left=False)
    if method == "eigen":
        return _symmetric_power(target_cov, 0.5) @ _symmetric_power(source_cov, -0.5)
    raise ValueError(f"unknown histogram matching method '{method}': use cholesky or eigen")


def match_color_histogram(
    source: torch.Tensor,
    target: torch.Tensor,
    method: str = "cholesky",
    relative_ridge: float = 1e-5,
) -> torch.Tensor:
    """Map `source`'s colours so their mean and covariance become `target`'s: x' = A(x-mu_s)+mu_t.

    The paper's use: source = style image, target = content image. Both covariances get a
    small ridge (relative to their scale) so near-singular ones (e.g. a grey style) stay finite.
    The result is not clamped: use `.clamp(0, 1)` before VGG or saving (`prepare_color_inputs`
    does).
    """
    source_mean, source_cov = color_statistics(source)
    target_mean, target_cov = color_statistics(target)
    matrix = color_transfer_matrix(
        _with_ridge(source_cov, relative_ridge), _with_ridge(target_cov, relative_ridge), method
    )
    flat = source.reshape(source.shape[0], 3, -1).to(torch.float64)
    mapped = matrix @ (flat - source_mean.unsqueeze(2)) + target_mean.unsqueeze(2)
    return mapped.reshape(source.shape).to(source.dtype)


def prepare_color_inputs(
    content: torch.Tensor,
    styles: list[torch.Tensor],
    mode: str = "none",
    method: str = "cholesky",
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The content and style images the objective should see for `mode`, clamped to [0, 1].

    Called per stage on the stage-sized images, before targets are built. In `luminance` mode
    both come back grey (Y in all three channels); start the synthesis from that content too.
    """
    _check_mode(mode)
    if mode == "histogram":
        return content, [match_color_histogram(s, content, method).clamp(0, 1) for s in styles]
    if mode == "luminance":
        content_luma = luminance(content)
        matched = [match_luminance(luminance(s), content_luma).clamp(0, 1) for s in styles]
        return gray_to_rgb(content_luma), [gray_to_rgb(luma) for luma in matched]
    return content, list(styles)


def finish_color(result: torch.Tensor, content: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """The final image for `mode`: in `luminance` and `original` modes the result's Y with the
    content's I and Q (content resized to the result's size), clamped to [0, 1]."""
    _check_mode(mode)
    if mode not in ("luminance", "original"):
        return result
    if content.shape[-2:] != result.shape[-2:]:
        raise ValueError(
            f"content is {tuple(content.shape[-2:])} but the result is {tuple(result.shape[-2:])}:"
            " resize the content to the result's size first"
        )
    return combine_luminance(luminance(result), content).clamp(0, 1)


def _check_mode(mode: str) -> None:
    if mode not in COLOR_MODES:
        raise ValueError(f"unknown colour mode '{mode}': use one of {', '.join(COLOR_MODES)}")
