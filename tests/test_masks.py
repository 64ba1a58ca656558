"""Spatial masks: sources, propagation to VGG layers, guided Gram and guided W2 statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stylelab.engine.features import LAYER_INDEX, VGGFeatures, load_vgg19_features
from stylelab.engine.losses import gram_matrix
from stylelab.engine.masks import generated_mask, layer_masks, load_mask, propagate_mask
from stylelab.engine.statistics import (
    GramStyleLoss,
    W2StyleLoss,
    blended_style_loss,
    feature_moments,
    guided_gram_matrix,
    style_statistic,
)
from stylelab.errors import ImageError

STYLE_LAYERS = [LAYER_INDEX[name] for name in ("relu1_1", "relu2_1", "relu3_1", "relu4_1")]


pytestmark = pytest.mark.usefixtures("one_thread")


def features(c: int = 8, h: int = 5, w: int = 7, seed: int = 0, n: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=generator).relu()


def save_mask_image(path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def test_generated_halves_partition_odd_sizes() -> None:
    left, right = generated_mask("left", (3, 5)), generated_mask("right", (3, 5))
    assert left.shape == (1, 1, 3, 5)
    assert torch.equal(left + right, torch.ones(1, 1, 3, 5))
    assert left[0, 0, 0].tolist() == [1, 1, 0, 0, 0]
    top, bottom = load_mask("mask:top", (5, 2)), load_mask("mask:bottom", (5, 2))
    assert torch.equal(top + bottom, load_mask("mask:all", (5, 2)))
    assert load_mask("mask:none", (5, 2)).sum() == 0
    with pytest.raises(ImageError, match="mask:left"):
        load_mask("mask:middle", (4, 4))


def test_image_masks_are_one_channel_white_is_one_and_resized(tmp_path) -> None:
    array = np.zeros((20, 30, 3), dtype=np.uint8)
    array[:, 15:] = 255  # right half white
    mask = load_mask(save_mask_image(tmp_path / "m.png", array), (10, 15))
    assert mask.shape == (1, 1, 10, 15) and mask.dtype == torch.float32
    assert mask.min() >= 0 and mask.max() <= 1
    assert mask[..., :7].max() == 0 and mask[..., 8:].min() == 1


def test_mask_with_another_aspect_ratio_is_a_one_line_error(tmp_path) -> None:
    path = save_mask_image(tmp_path / "square.png", np.zeros((20, 20, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="same aspect ratio") as error:
        load_mask(path, (20, 30))
    assert "\n" not in str(error.value) and "square.png" in str(error.value)
    assert load_mask(path, (7, 7)).shape == (1, 1, 7, 7)


@pytest.mark.parametrize("size_hw", [(37, 23), (41, 53), (33, 32)])
def test_propagated_masks_have_the_shapes_of_real_vgg_features(size_hw) -> None:
    layers = [0, 3, 4, 5, 9, 10, 18, 19, 25, 27, 28]
    encoder = VGGFeatures(load_vgg19_features("random"), layers)
    with torch.no_grad():
        outputs = encoder(torch.rand(1, 3, *size_hw))
    masks = layer_masks(generated_mask("left", size_hw), layers)
    for layer in layers:
        assert masks[layer].shape[-2:] == outputs[layer].shape[-2:], layer


def test_propagated_complementary_masks_still_sum_to_one() -> None:
    for layer in (4, 9, 18):
        left = propagate_mask(generated_mask("left", (21, 27)), layer)
        right = propagate_mask(generated_mask("right", (21, 27)), layer)
        assert torch.equal(left + right, torch.ones_like(left))
        assert left.min() >= 0 and left.max() <= 1


def test_all_ones_mask_gives_exactly_the_unmasked_gram() -> None:
    f = features(n=2)
    ones = torch.ones(1, 1, 5, 7)
    assert torch.equal(guided_gram_matrix(f, ones), gram_matrix(f))
    target = features(seed=1)
    assert torch.equal(
        GramStyleLoss(gram_matrix(target), ones)(f), GramStyleLoss(gram_matrix(target))(f)
    )


def test_all_ones_mask_gives_exactly_the_unmasked_w2() -> None:
    f, target = features(), features(seed=1)
    ones = torch.ones(1, 1, 5, 7)
    masked_target = feature_moments(target.double(), ones)
    unmasked_target = feature_moments(target.double())
    assert torch.equal(masked_target.mean, unmasked_target.mean)
    assert torch.equal(masked_target.second_moment, unmasked_target.second_moment)
    assert torch.equal(W2StyleLoss(masked_target, ones)(f), W2StyleLoss(unmasked_target)(f))


def test_left_and_right_guided_grams_add_up_to_the_gram() -> None:
    """G_r is normalised by C * sum(m_r**2), so the energy-weighted sum is the full Gram."""
    f = features(h=6, w=9)
    left, right = generated_mask("left", (6, 9)), generated_mask("right", (6, 9))
    energy_left, energy_right = left.sum(), right.sum()  # binary: sum(m**2) = sum(m)
    combined = (
        energy_left * guided_gram_matrix(f, left) + energy_right * guided_gram_matrix(f, right)
    ) / (6 * 9)
    torch.testing.assert_close(combined, gram_matrix(f))
    # Each region's Gram is that of its own pixels only.
    torch.testing.assert_close(guided_gram_matrix(f, left), gram_matrix(f[..., :4]))


def test_uncovered_pixels_get_no_style_gradient() -> None:
    left = generated_mask("left", (5, 7))
    target = features(seed=1)
    for loss in (
        GramStyleLoss(gram_matrix(target), left),
        W2StyleLoss(target, left),
    ):
        f = features().requires_grad_()
        (grad,) = torch.autograd.grad(loss(f), f)
        assert grad[..., 4:].abs().max() == 0, type(loss).__name__
        assert grad[..., :3].abs().max() > 0, type(loss).__name__


def test_style_masks_choose_where_the_target_comes_from() -> None:
    """A style-frame mask takes the target from the masked part of the style only."""
    style = torch.cat([features(h=4, w=4, seed=1), 5 * features(h=4, w=4, seed=2)], dim=-1)
    left = generated_mask("left", (4, 8))
    synthesis = features(h=4, w=4, seed=1)
    for name in ("gram", "w2"):
        guided = blended_style_loss(style_statistic(name), [style], [1.0], [left])
        unguided = blended_style_loss(style_statistic(name), [style], [1.0])
        assert guided(synthesis) < 1e-4 < unguided(synthesis), name
