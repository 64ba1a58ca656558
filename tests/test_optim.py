"""The optimisers: L-BFGS against torch.optim.LBFGS, resuming, Adam, and the CUDA-graph step."""

from __future__ import annotations

import copy

import pytest
import torch

from stylelab.engine.optim import LBFGS, Adam, make_optimizer

CUDA = torch.cuda.is_available()


def objective(x: torch.Tensor) -> torch.Tensor:
    """A small non-convex problem: some curvature pairs have s.y <= 0 and must be skipped."""
    scales = torch.linspace(0.5, 3.0, x.numel(), dtype=x.dtype, device=x.device)
    return 0.5 * (scales * x * x).sum() + torch.sin(3 * x).sum() + 0.05 * (x**4).sum()


def gradient(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(x), x)
    return grad


def start(n: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 2


def reference_path(
    x0: torch.Tensor, steps: int, history_size: int, lr: float
) -> list[torch.Tensor]:
    """torch.optim.LBFGS, one evaluation per step, no line search, tolerance checks off."""
    x = x0.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [x], lr=lr, max_iter=1, history_size=history_size, line_search_fn=None,
        tolerance_grad=-1.0, tolerance_change=-float("inf"),
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective(x)
        loss.backward()
        return loss

    path = []
    for _ in range(steps):
        optimizer.step(closure)
        path.append(x.detach().clone())
    return path


def own_path(optimizer: LBFGS, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    path = []
    for _ in range(steps):
        optimizer.step(gradient(x))
        path.append(x.detach().clone())
    return path


@pytest.mark.parametrize("history_size", [3, 100])
def test_lbfgs_matches_torch(history_size: int) -> None:
    """In float64, so that rounding (amplified by the non-convex problem) stays out of the way."""
    x0 = start().double()
    expected = reference_path(x0, 30, history_size, lr=0.5)
    x = x0.clone()
    optimizer = LBFGS(x, lr=0.5, history_size=history_size)
    got = own_path(optimizer, x, 30)
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-7), f"step {step + 1}: {(a - b).abs().max()}"
    assert int(optimizer.stored) < 29  # some pairs were rejected (s.y <= eps) and skipped


def test_lbfgs_float32_close_to_torch() -> None:
    x0 = start()
    expected = reference_path(x0, 6, 100, lr=0.5)
    x = x0.clone()
    got = own_path(LBFGS(x, lr=0.5), x, 6)
    assert all(
        torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(got, expected, strict=True)
    )


def test_lbfgs_state_round_trip() -> None:
    x = start(seed=1)
    optimizer = LBFGS(x, lr=0.5, history_size=4)
    own_path(optimizer, x, 7)
    state, saved = copy.deepcopy(optimizer.state_dict()), x.clone()
    expected = own_path(optimizer, x, 6)

    resumed = saved.clone()
    fresh = LBFGS(resumed, lr=0.5, history_size=4)
    fresh.load_state_dict(state)
    assert all(
        torch.equal(a, b) for a, b in zip(own_path(fresh, resumed, 6), expected, strict=True)
    )

    with pytest.raises(ValueError, match="history_size"):
        LBFGS(torch.zeros(24), history_size=5).load_state_dict(state)


def test_lbfgs_bf16_history_still_converges() -> None:
    x0 = start()
    results = {}
    for dtype in ("fp32", "bf16"):
        x = x0.clone()
        own_path(LBFGS(x, lr=0.5, history_size=10, history_dtype=dtype), x, 40)
        results[dtype] = float(objective(x))
    assert results["bf16"] < float(objective(x0)) - 1
    assert abs(results["bf16"] - results["fp32"]) < 0.05 * abs(results["fp32"]) + 0.05


def test_adam_matches_torch() -> None:
    x0 = start()
    reference = x0.clone().requires_grad_(True)
    torch_adam = torch.optim.Adam([reference], lr=0.05)
    x = x0.clone()
    adam = make_optimizer("adam", x, lr=0.05)
    assert isinstance(adam, Adam)
    for _ in range(20):
        torch_adam.zero_grad()
        objective(reference).backward()
        torch_adam.step()
        adam.step(gradient(x))
    assert torch.allclose(x, reference.detach(), rtol=1e-5, atol=1e-6)


def test_make_optimizer_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgd", torch.zeros(3), lr=1.0)
    with pytest.raises(ValueError, match="history_dtype"):
        LBFGS(torch.zeros(3), history_dtype="fp16")


def tiny_synthesizer(device: str, optimizer: str, precision: str, cuda_graph: bool | None):
    from stylelab.engine.features import VGGFeatures, load_vgg19_features
    from stylelab.engine.objective import gatys_objective
    from stylelab.engine.synthesis import Synthesizer

    generator = torch.Generator().manual_seed(0)
    content, style = (torch.rand(1, 3, 48, 48, generator=generator).to(device) for _ in range(2))
    encoder = VGGFeatures(load_vgg19_features("random"), [0, 5, 10, 19, 25, 28])
    layout = torch.channels_last if device == "cuda" else torch.contiguous_format  # as the runner
    encoder = encoder.to(device, memory_format=layout)
    loss = gatys_objective(encoder, content, style, [25], [0, 5, 10, 19, 28], tv_weight=10.0)
    lr = 1.0 if optimizer == "lbfgs" else 0.02
    return Synthesizer(loss, content, optimizer, lr, 20, precision=precision, cuda_graph=cuda_graph)


def test_synthesizer_is_eager_on_cpu() -> None:
    synth = tiny_synthesizer("cpu", "lbfgs", "fp32", cuda_graph=True)
    assert synth.graph is None
    terms = synth.step()
    assert set(terms) >= {"total", "content", "style", "tv"} and synth.step_count == 1


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_step_matches_eager_step(optimizer: str, precision: str, monkeypatch) -> None:
    """A replayed step computes what an eager step computes from the same state.

    Settings as the runner's (cuDNN autotuning), without TF32 for fp32. Whole trajectories are
    compared in the benchmark (bit-identical at 512 px); on this tiny problem L-BFGS at lr=1
    amplifies the rounding differences of kernels chosen in and out of capture.
    """
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", precision != "fp32")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", precision != "fp32")
    graphed = tiny_synthesizer("cuda", optimizer, precision, cuda_graph=True)
    trajectory = torch.stack([graphed.step()["total"] for _ in range(6)])  # 3 eager, capture, 2
    assert graphed.graph is not None and graphed.graph.captured
    eager = tiny_synthesizer("cuda", optimizer, precision, cuda_graph=False)
    eager.load_state_dict(copy.deepcopy(graphed.state_dict()))
    tolerance = 1e-4 if precision == "fp32" else 1e-2
    for _ in range(2):
        ours, theirs = graphed.step(), eager.step()
        assert set(ours) == set(theirs)
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=tolerance, atol=1e-6)
    assert (graphed.image - eager.image).abs().max() < 100 * tolerance
    assert torch.isfinite(trajectory).all() and trajectory[-1] < trajectory[0]


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graph_resume_recaptures() -> None:
    synth = tiny_synthesizer("cuda", "adam", "fp32", cuda_graph=True)
    for _ in range(5):
        synth.step()
    state = copy.deepcopy(synth.state_dict())
    expected = torch.stack([synth.step()["total"] for _ in range(5)])
    synth.load_state_dict(state)
    again = torch.stack([synth.step()["total"] for _ in range(5)])
    assert torch.allclose(again, expected, rtol=1e-4)
