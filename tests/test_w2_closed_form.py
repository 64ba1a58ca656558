"""W2's cross term in closed form: root_trace's gradient, the small side, against eigh."""

from __future__ import annotations

import pytest
import torch

from benchmarks.style_statistics import w2_before, w2_reference
from stylelab.engine import root_trace as rt
from stylelab.engine.statistics import W2StyleLoss, blend_moments, feature_moments
from tests.conftest import no_host_reads

pytestmark = pytest.mark.usefixtures("one_thread")

# (channels, height, width): 16 pixels < 64 channels takes the small side, 64 > 16 the large.
SMALL, LARGE = (64, 4, 4), (16, 8, 8)
# Iterations that resolve these features' spectra in fp32 (15, the default, leaves the small
# side's smallest eigenvalues unresolved: 1e-3 off eigh there, and the C x C root before 4e-3).
RESOLVED = 20


def gaussian_features(c: int, h: int, w: int, seed: int = 0, n: int = 1, dtype=torch.float32):
    """Channel variances 0.05**2 to 0.2**2 (real features: benchmarks/RESULTS.md)."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.05, 0.2, c, dtype=dtype)[None, :, None, None]
    return torch.randn(n, c, h, w, generator=generator, dtype=dtype) * scales + 0.1


def soft_left_mask(h: int, w: int) -> torch.Tensor:
    """Zero on the right third, soft weights elsewhere (both kinds of mask pixels)."""
    mask = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(5)) * 0.8 + 0.2
    mask[..., (2 * w) // 3 :] = 0
    return mask


def value_and_gradient(loss, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = features.detach().clone().requires_grad_()
    value = loss(leaf)
    (gradient,) = torch.autograd.grad(value, leaf)
    return value.detach(), gradient


def assert_relative(value: torch.Tensor, reference: torch.Tensor, tolerance: float) -> None:
    error = (value.double() - reference).norm() / reference.norm()
    assert error <= tolerance, f"relative error {error:.2e} > {tolerance:.0e}"


def root_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every matrix whose root `root_trace` takes, recorded."""
    sizes: list[int] = []
    original = rt.root_trace

    def recording(matrix: torch.Tensor, num_iters: int = rt.ROOT_TRACE_ITERATIONS):
        sizes.append(matrix.shape[-1])
        return original(matrix, num_iters)

    monkeypatch.setattr(rt, "root_trace", recording)
    return sizes


def test_root_trace_value_and_gradient_match_eigh() -> None:
    a = torch.randn(2, 7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    matrix = (a @ a.transpose(1, 2) + 0.5 * torch.eye(7, dtype=torch.float64)).requires_grad_()
    weights = torch.tensor([1.0, -2.0], dtype=torch.float64)
    value = rt.root_trace(matrix, num_iters=20)
    (gradient,) = torch.autograd.grad((weights * value).sum(), matrix)
    exact = torch.linalg.eigvalsh(matrix).sqrt().sum(-1)
    (exact_gradient,) = torch.autograd.grad((weights * exact).sum(), matrix)
    torch.testing.assert_close(value, exact, atol=1e-10, rtol=0)
    torch.testing.assert_close(gradient, exact_gradient, atol=1e-10, rtol=0)


def test_backward_does_not_run_through_the_iterations() -> None:
    """The autograd graph holds a few matmuls, not three per Newton-Schulz iteration."""
    for shape in (SMALL, LARGE):
        features = gaussian_features(*shape).requires_grad_()
        loss = W2StyleLoss(gaussian_features(*shape, seed=1))(features)
        nodes, seen = [loss.grad_fn], set()
        while nodes:
            node = nodes.pop()
            if node is not None and node not in seen:
                seen.add(node)
                nodes.extend(next_node for next_node, _ in node.next_functions)
        names = [type(node).__name__ for node in seen]
        assert sum("Bmm" in name or "Mm" in name for name in names) <= 8, sorted(names)
        assert "_RootTraceBackward" in names


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small-side", "large-side"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_loss_and_gradient_match_the_eigh_reference(
    shape: tuple[int, int, int], masked: bool
) -> None:
    features, target = gaussian_features(*shape), gaussian_features(*shape, seed=1)
    mask = soft_left_mask(*shape[1:]) if masked else None
    value, gradient = value_and_gradient(W2StyleLoss(target, mask, num_iters=RESOLVED), features)
    reference, reference_gradient = value_and_gradient(
        lambda leaf: w2_reference(target, leaf, mask), features.double()
    )
    assert_relative(value, reference, 1e-4)
    assert_relative(gradient, reference_gradient, 1e-4)
    if not masked:  # the formulation before: C x C root, autograd through the iterations
        before, before_gradient = value_and_gradient(
            lambda leaf: w2_before(target, leaf, RESOLVED), features
        )
        assert_relative(value, before.double(), 1e-4)
        assert_relative(gradient, before_gradient.double(), 1e-4)


def test_the_side_is_chosen_by_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """relu5_1 of a small image: the root of a (k + P) matrix, k the style's rank."""
    sizes = root_sizes(monkeypatch)
    small = W2StyleLoss(gaussian_features(*SMALL, seed=1))
    assert small.target_eigenvalues.shape == (15,)  # 16 centred pixels: rank 15
    small(gaussian_features(*SMALL))
    W2StyleLoss(gaussian_features(*LARGE, seed=1))(gaussian_features(*LARGE))
    assert sizes == [15 + 16, 16]


def test_small_side_gradient_matches_finite_differences() -> None:
    features = gaussian_features(10, 2, 2, dtype=torch.float64).requires_grad_()
    loss = W2StyleLoss(gaussian_features(10, 1, 3, seed=1), ridge=1e-2, num_iters=25).double()
    assert loss.target_eigenvalues.shape == (2,)  # 4 + 2 < 10: the small side
    assert torch.autograd.gradcheck(loss, (features,), eps=1e-6, atol=1e-6)


def test_small_side_with_an_all_ones_mask_is_exactly_unmasked() -> None:
    features, target = gaussian_features(*SMALL), gaussian_features(*SMALL, seed=1)
    ones = torch.ones(1, 1, *SMALL[1:])
    assert torch.equal(W2StyleLoss(target, ones)(features), W2StyleLoss(target)(features))


def test_small_side_with_a_blended_target_and_a_batch() -> None:
    a, b = gaussian_features(*SMALL, seed=1), 2 * gaussian_features(*SMALL, seed=2)
    blend = blend_moments([feature_moments(a.double()), feature_moments(b.double())], [1, 3])
    loss = W2StyleLoss(blend, num_iters=RESOLVED)
    assert loss.target_eigenvalues.shape == (31,)  # 15 per style and the means': 31 + 16 < 64
    batch = torch.cat([gaussian_features(*SMALL), gaussian_features(*SMALL, seed=3)])
    value, gradient = value_and_gradient(loss, batch)
    reference, reference_gradient = value_and_gradient(
        lambda leaf: w2_reference(blend, leaf), batch.double()
    )
    assert_relative(value, reference, 1e-4)
    assert_relative(gradient, reference_gradient, 1e-4)


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["small-side", "large-side"])
def test_forward_and_backward_read_nothing_back(shape: tuple[int, int, int]) -> None:
    loss = W2StyleLoss(gaussian_features(*shape, seed=1), soft_left_mask(*shape[1:]))
    features = gaussian_features(*shape).requires_grad_()
    with no_host_reads("W2StyleLoss"):
        loss(features).backward()
    assert torch.isfinite(features.grad).all()


def test_small_side_runs_in_fp32_under_autocast() -> None:
    features, target = gaussian_features(*SMALL), gaussian_features(*SMALL, seed=1)
    expected = W2StyleLoss(target)(features)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        value = W2StyleLoss(target)(features.bfloat16())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, atol=0.02 * expected.item(), rtol=0)


def test_padding_the_spectrum_with_zero_eigenvalues_changes_nothing() -> None:
    """Style spectra of different ranks can be stacked (a batch of targets) by padding with
    zero eigenvalues: the r (C - m) term makes up for the larger matrix, exactly."""
    target = gaussian_features(*SMALL, seed=1).double()
    covariance = feature_moments(target).covariance()[0]
    spectrum = rt.style_spectrum(covariance, 1e-4)
    _, everything = torch.linalg.eigh(covariance)
    extra = everything[:, :3]  # eigenvectors of (numerically) zero eigenvalues
    zeros = torch.zeros(3, dtype=torch.float64)
    corner = torch.block_diag(spectrum.corner, torch.zeros(3, 3, dtype=torch.float64))
    padded = rt.StyleSpectrum(
        torch.cat([spectrum.basis, extra], dim=1),
        torch.cat([spectrum.eigenvalues, zeros]),
        torch.cat([spectrum.coupling, zeros]),
        corner,
    )
    factor = gaussian_features(*SMALL, dtype=torch.float64).flatten(2)
    factor = (factor - factor.mean(-1, keepdim=True)) / 4
    values = [rt.cross_trace_small(factor, s, 1e-4, num_iters=40) for s in (spectrum, padded)]
    torch.testing.assert_close(values[0], values[1], atol=1e-10, rtol=1e-10)
