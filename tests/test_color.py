"""Colour preservation: YIQ, histogram matching, luminance-only transfer and original colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2yiq

from stylelab.engine.color import (
    color_statistics,
    combine_luminance,
    finish_color,
    luminance,
    match_color_histogram,
    match_luminance,
    prepare_color_inputs,
    rgb_to_yiq,
    yiq_to_rgb,
)
from stylelab.engine.images import pil_to_tensor, tensor_to_uint8
from stylelab.engine.sources import load_skimage

# Largest change of I or Q when each RGB channel moves by up to half a uint8 step: the I row's
# absolute coefficients sum to 1.192 (Q's to 1.046), so |dI| <= 1.192 * 0.5 / 255 < 0.6 / 255.
UINT8_IQ_TOLERANCE = 0.6 / 255


def photo(name: str, size: int = 48) -> torch.Tensor:
    return pil_to_tensor(load_skimage(name).resize((size, size)))


def uint8_roundtrip(image: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(tensor_to_uint8(image)).permute(2, 0, 1)[None].float() / 255


def test_yiq_matches_scikit_image_and_round_trips() -> None:
    image = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    yiq = rgb_to_yiq(image)
    expected = rgb2yiq(image[0].permute(1, 2, 0).numpy())
    np.testing.assert_allclose(yiq[0].permute(1, 2, 0).numpy(), expected, atol=1e-12)
    torch.testing.assert_close(yiq_to_rgb(yiq), image, atol=1e-12, rtol=0)
    # Grey pixels have no chroma and Y equal to their value.
    grey = torch.full((1, 3, 2, 2), 0.3, dtype=torch.float64)
    torch.testing.assert_close(rgb_to_yiq(grey)[:, 0], grey[:, 0])
    assert rgb_to_yiq(grey)[:, 1:].abs().max() < 1e-7


@pytest.mark.parametrize("method", ["cholesky", "eigen"])
def test_histogram_matching_gives_the_content_mean_and_covariance(method: str) -> None:
    style, content = photo("coffee"), photo("astronaut")
    matched = match_color_histogram(style, content, method)
    mean, cov = color_statistics(matched)
    content_mean, content_cov = color_statistics(content)
    torch.testing.assert_close(mean, content_mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(cov, content_cov, atol=1e-4, rtol=0)
    assert not torch.allclose(cov, color_statistics(style)[1], atol=1e-3)


def test_histogram_methods_differ_but_both_are_affine_maps_of_the_style() -> None:
    style, content = photo("chelsea"), photo("rocket")
    cholesky = match_color_histogram(style, content, "cholesky")
    eigen = match_color_histogram(style, content, "eigen")
    assert (cholesky - eigen).abs().max() > 1e-3  # the paper's two choices are different maps


def test_histogram_matching_is_finite_for_a_grey_style() -> None:
    grey = luminance(photo("camera")).expand(-1, 3, -1, -1)  # rank-1 colour covariance
    for method in ("cholesky", "eigen"):
        matched = match_color_histogram(grey, photo("astronaut"), method)
        assert torch.isfinite(matched).all()
        assert matched.abs().max() < 10


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="cholesky or eigen"):
        match_color_histogram(photo("coffee"), photo("astronaut"), "svd")


def test_luminance_matching_gives_the_content_mean_and_std() -> None:
    style_y, content_y = luminance(photo("coffee")), luminance(photo("camera"))
    matched = match_luminance(style_y, content_y)
    torch.testing.assert_close(matched.mean(), content_y.mean(), atol=1e-5, rtol=0)
    torch.testing.assert_close(matched.std(unbiased=False), content_y.std(unbiased=False))
    flat = match_luminance(torch.full_like(style_y, 0.4), content_y)
    torch.testing.assert_close(flat, torch.full_like(flat, content_y.mean().item()))


def test_luminance_mode_feeds_grey_images_to_vgg() -> None:
    content, style = photo("astronaut"), photo("coffee")
    content_in, (style_in,) = prepare_color_inputs(content, [style], "luminance")
    for image in (content_in, style_in):
        assert image.shape == content.shape
        assert torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 0], image[:, 2])
        assert image.min() >= 0 and image.max() <= 1
    torch.testing.assert_close(content_in[:, :1], luminance(content))


def test_histogram_mode_clamps_the_matched_style() -> None:
    content, style = photo("astronaut"), photo("coffee")
    content_in, (style_in,) = prepare_color_inputs(content, [style], "histogram")
    assert content_in is content
    assert style_in.min() >= 0 and style_in.max() <= 1
    torch.testing.assert_close(style_in, match_color_histogram(style, content).clamp(0, 1))


def in_gamut_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A content with values in [0.4, 0.6] (so |R - Y| etc. <= 0.2) from uint8, and a
    synthesised result whose luminance stays in [0.2, 0.8]: the recombination needs no clamp."""
    generator = torch.Generator().manual_seed(1)
    content = (torch.rand(1, 3, 16, 16, generator=generator) * 0.2 + 0.4).mul(255).round() / 255
    result = torch.rand(1, 3, 16, 16, generator=generator) * 0.6 + 0.2
    return content, result


@pytest.mark.parametrize("mode", ["luminance", "original"])
def test_final_image_keeps_the_content_chroma_to_uint8_rounding(mode: str) -> None:
    content, result = in_gamut_pair()
    if mode == "luminance":  # the synthesis ran on grey images
        result = result.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    final = uint8_roundtrip(finish_color(result, content, mode))
    torch.testing.assert_close(
        rgb_to_yiq(final)[:, 1:], rgb_to_yiq(content)[:, 1:], atol=UINT8_IQ_TOLERANCE, rtol=0
    )
    torch.testing.assert_close(
        luminance(final), luminance(result), atol=0.5 / 255 + 1e-6, rtol=0
    )  # Y row sums to 1 with non-negative coefficients: at most half a step


def test_combine_luminance_round_trips_an_image() -> None:
    image = photo("chelsea")
    torch.testing.assert_close(combine_luminance(luminance(image), image), image)


def test_modes_without_recombination_return_the_result_unchanged() -> None:
    content, result = in_gamut_pair()
    assert finish_color(result, content, "none") is result
    assert finish_color(result, content, "histogram") is result
    with pytest.raises(ValueError, match="unknown colour mode"):
        finish_color(result, content, "sepia")
    with pytest.raises(ValueError, match="resize the content"):
        finish_color(result, content[..., :8], "original")
