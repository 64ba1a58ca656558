"""Style statistics: Newton-Schulz square root, Gaussian W2 loss, blends, the Gram counterpart."""

from __future__ import annotations

import pytest
import torch

from stylelab.engine.losses import StyleLoss, gram_matrix
from stylelab.engine.statistics import (
    DEFAULT_RIDGE,
    GramStatistic,
    GramStyleLoss,
    W2Statistic,
    W2StyleLoss,
    blend_grams,
    blend_moments,
    blended_style_loss,
    feature_mean_and_covariance,
    feature_moments,
    gaussian_w2_squared,
    sqrtm_eigh,
    sqrtm_newton_schulz,
    style_statistic,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def relu_features(c: int, h: int, w: int, seed: int = 0, n: int = 1, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=generator, dtype=dtype).relu()


def hadamard_features(means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """(1, C, 2, 4) features whose channels have the given means and exactly diagonal
    covariance diag(stds**2): centred channels are distinct non-constant Hadamard rows."""
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    hadamard = torch.kron(torch.kron(h2, h2), h2)  # 8 x 8, orthogonal rows, row 0 constant
    rows = hadamard[1 : len(means) + 1]  # zero mean, unit variance, mutually orthogonal
    flat = means[:, None] + stds[:, None] * rows
    return flat.reshape(1, len(means), 2, 4)


def test_newton_schulz_matches_eigh_for_a_well_conditioned_matrix() -> None:
    a = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spd = a @ a.T + 0.5 * torch.eye(6, dtype=torch.float64)
    root = sqrtm_newton_schulz(spd)
    torch.testing.assert_close(root, sqrtm_eigh(spd), atol=1e-9, rtol=0)
    torch.testing.assert_close(root @ root, spd, atol=1e-8, rtol=0)


def test_w2_equals_the_closed_form_for_diagonal_covariances() -> None:
    mean_a, mean_b = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([1.5, 0.0, 2.0])
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([2.0, 1.0, 0.5])
    args = [t.double() for t in (mean_a, var_a.diag(), mean_b, var_b.diag(), var_b.sqrt().diag())]
    expected = (mean_a - mean_b).square().sum() + (var_a.sqrt() - var_b.sqrt()).square().sum()
    torch.testing.assert_close(gaussian_w2_squared(*args).float(), expected)


def test_w2_loss_on_features_with_diagonal_covariance_matches_the_closed_form() -> None:
    means_a, stds_a = torch.tensor([0.3, 1.0, 2.0]), torch.tensor([0.5, 1.0, 0.2])
    means_b, stds_b = torch.tensor([0.1, 1.5, 2.0]), torch.tensor([1.0, 0.3, 0.2])
    features_a = hadamard_features(means_a.double(), stds_a.double())
    features_b = hadamard_features(means_b.double(), stds_b.double())
    _, cov = feature_mean_and_covariance(features_a)
    torch.testing.assert_close(cov[0], (stds_a**2).diag().double())
    loss = W2StyleLoss(features_b, ridge=1e-4)(features_a)
    var_a, var_b = stds_a.double() ** 2 + 1e-4, stds_b.double() ** 2 + 1e-4
    expected = (means_a - means_b).double().square().sum() + (
        var_a.sqrt() - var_b.sqrt()
    ).square().sum()
    torch.testing.assert_close(loss, expected / 3, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("channels", "pixels"), [(16, (8, 8)), (32, (4, 4)), (64, (2, 2))])
def test_w2_is_zero_at_identical_statistics(channels: int, pixels: tuple[int, int]) -> None:
    """Full-rank and rank-deficient covariances. With rank r < C, the C - r null directions
    of the cross term have eigenvalue ridge**2, below what 15 fp32 Newton-Schulz iterations
    resolve; each then contributes at most 2 * ridge / C, so |loss| <= 2 * ridge."""
    features = relu_features(channels, *pixels)
    loss = W2StyleLoss(features)(features)
    assert abs(loss.item()) <= 2 * DEFAULT_RIDGE
    other = relu_features(channels, *pixels, seed=1)
    assert W2StyleLoss(other)(features).item() > 100 * DEFAULT_RIDGE


def test_w2_gradient_matches_finite_differences() -> None:
    features = relu_features(4, 3, 3, dtype=torch.float64).add(0.1).requires_grad_()
    loss = W2StyleLoss(relu_features(4, 3, 3, seed=1, dtype=torch.float64), ridge=1e-3)
    loss = loss.double()
    assert torch.autograd.gradcheck(loss, (features,), eps=1e-6, atol=1e-6)


def test_w2_gradient_with_a_mask_matches_finite_differences() -> None:
    features = relu_features(3, 3, 4, dtype=torch.float64).add(0.1).requires_grad_()
    mask = torch.rand(1, 1, 3, 4, generator=torch.Generator().manual_seed(2))
    loss = W2StyleLoss(relu_features(3, 4, 4, seed=1), mask=mask, ridge=1e-3)
    loss.mask = loss.mask.double()
    assert torch.autograd.gradcheck(loss, (features,), eps=1e-6, atol=1e-6)


def test_w2_is_finite_for_constant_features() -> None:
    constant = torch.full((1, 8, 4, 4), 0.7, requires_grad=True)
    for target in (constant.detach(), relu_features(8, 4, 4), torch.zeros(1, 8, 4, 4)):
        loss = W2StyleLoss(target)(constant)
        (grad,) = torch.autograd.grad(loss, constant)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert W2StyleLoss(constant.detach())(constant).abs() < 1e-6


def test_w2_averages_one_loss_per_image_of_a_batch() -> None:
    target, batch = relu_features(8, 4, 4), relu_features(8, 4, 4, seed=3, n=2)
    loss = W2StyleLoss(target)
    each = [loss(batch[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(loss(batch), (each[0] + each[1]) / 2)


def test_w2_runs_in_fp32_under_autocast() -> None:
    target, features = relu_features(8, 4, 4), relu_features(8, 4, 4, seed=1)
    expected = W2StyleLoss(target)(features)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        value = W2StyleLoss(target)(features.bfloat16())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, atol=0.02 * expected.item(), rtol=0)


def test_blended_moments_are_the_mixture_moments() -> None:
    a, b = relu_features(6, 4, 4), relu_features(6, 4, 4, seed=1)
    blended = blend_moments([feature_moments(a), feature_moments(b)], [2.0, 2.0])
    pooled = feature_moments(torch.cat([a, b], dim=-1))  # both styles' pixels, equal shares
    torch.testing.assert_close(blended.mean, pooled.mean)
    torch.testing.assert_close(blended.second_moment, pooled.second_moment)
    _, pooled_cov = feature_mean_and_covariance(torch.cat([a, b], dim=-1))
    torch.testing.assert_close(blended.covariance(), pooled_cov, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="positive sum"):
        blend_moments([feature_moments(a)], [0.0])


def test_blended_grams_are_the_weighted_sum() -> None:
    a, b = relu_features(6, 4, 4), relu_features(6, 4, 4, seed=1)
    blended = blend_grams([gram_matrix(a), gram_matrix(b)], [0.25, 0.75])
    torch.testing.assert_close(blended, 0.25 * gram_matrix(a) + 0.75 * gram_matrix(b))
    with pytest.raises(ValueError, match="blend weights"):
        blend_grams([gram_matrix(a)], [0.5, 0.5])


def test_gram_loss_without_mask_is_exactly_style_loss() -> None:
    target, features = relu_features(8, 5, 3), relu_features(8, 5, 3, seed=1, n=2)
    expected = StyleLoss(target)(features)
    assert torch.equal(GramStyleLoss(gram_matrix(target))(features), expected)
    built = blended_style_loss(GramStatistic(), [target], [1.0])
    assert torch.equal(built(features), expected)


def test_statistics_are_chosen_by_name() -> None:
    target, features = relu_features(8, 4, 4), relu_features(8, 4, 4, seed=1)
    w2 = style_statistic("w2", num_iters=12)
    assert isinstance(w2, W2Statistic) and w2.num_iters == 12
    built = blended_style_loss(w2, [target], [1.0])
    assert isinstance(built, W2StyleLoss)
    torch.testing.assert_close(built(features), W2StyleLoss(target, num_iters=12)(features))
    assert isinstance(style_statistic("gram"), GramStatistic)
    with pytest.raises(ValueError, match="gram, w2"):
        style_statistic("sliced")
