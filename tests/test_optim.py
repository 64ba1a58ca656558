"""The optimisers: L-BFGS against torch.optim.LBFGS, resuming, Adam, and the CUDA-graph step."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from stylelab.engine.optim import LBFGS, Adam, make_optimizer
from tests.conftest import no_host_reads

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


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def ill_conditioned_quadratic(x: torch.Tensor) -> torch.Tensor:
    scales = torch.logspace(0, 3, x.numel(), dtype=x.dtype, device=x.device)
    return 0.5 * (scales * x * x).sum()


def loss_and_gradient(function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    value = function(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def search_path(function, x: torch.Tensor, optimizer: LBFGS, evaluations: int):
    """Losses of every evaluation and whether each point evaluated was accepted."""
    losses, accepted = [], []
    for _ in range(evaluations):
        value, grad = loss_and_gradient(function, x)
        optimizer.step(grad, value)
        losses.append(float(value))
        accepted.append(bool(optimizer.accepted))
    return losses, accepted


def torch_strong_wolfe(function, x0: torch.Tensor, evaluations: int, history_size: int):
    """torch.optim.LBFGS with its strong-Wolfe line search: the loss of every evaluation."""
    x, losses = x0.clone().requires_grad_(True), []
    optimizer = torch.optim.LBFGS(
        [x], lr=1.0, max_iter=evaluations, max_eval=evaluations, history_size=history_size,
        line_search_fn="strong_wolfe", tolerance_grad=-1.0, tolerance_change=-1.0,
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = function(x)
        value.backward()
        losses.append(float(value.detach()))
        return value

    optimizer.step(closure)
    return losses


def first_below(losses: list[float], threshold: float) -> int:
    return next(i + 1 for i, value in enumerate(losses) if value < threshold)


@pytest.mark.parametrize("lr", [1.0, 20.0])
@pytest.mark.parametrize("function", [objective, rosenbrock])
def test_armijo_never_accepts_an_increase(function, lr: float) -> None:
    x = start(seed=2).double()
    optimizer = LBFGS(x, lr=lr, history_size=5, line_search="armijo")
    losses, accepted = search_path(function, x, optimizer, 120)
    kept = [value for value, ok in zip(losses, accepted, strict=True) if ok]
    assert accepted[0] and not all(accepted)  # trials were rejected: the test tests something
    assert all(b <= a for a, b in itertools.pairwise(kept)), "an accepted point was higher"
    assert kept[-1] < losses[0] - 1


@pytest.mark.parametrize(
    ("function", "x0", "threshold"),
    [
        (rosenbrock, torch.tensor([-1.2, 1.0] * 5, dtype=torch.float64), 1e-10),
        (ill_conditioned_quadratic, torch.ones(50, dtype=torch.float64), 1e-8),
    ],
)
def test_armijo_converges_as_fast_as_torch_strong_wolfe(function, x0, threshold) -> None:
    """Evaluations (not iterations) to reach the threshold, against torch's strong Wolfe."""
    x = x0.clone()
    losses, _ = search_path(function, x, LBFGS(x, history_size=10, line_search="armijo"), 300)
    reference = torch_strong_wolfe(function, x0, 300, history_size=10)
    ours, theirs = first_below(losses, threshold), first_below(reference, threshold)
    assert ours <= 1.25 * theirs, (ours, theirs)
    assert min(losses) < threshold / 10


def test_armijo_step_reads_nothing_back_from_the_device() -> None:
    """No item/bool/float inside step(): no host decisions, so a step can be graph-captured
    (with bounds: the projected search, as the Synthesizer runs it)."""
    x = start(seed=4).clamp(-1, 1)
    optimizer = LBFGS(x, lr=20.0, history_size=4, line_search="armijo", bounds=(-1.0, 1.0))
    for _ in range(12):
        value, grad = loss_and_gradient(objective, x)
        with no_host_reads("step()"):
            optimizer.step(grad, value)
    assert int(optimizer.steps) == 12 and int(optimizer.stored) >= 1
    assert not bool(optimizer.accepted.all()) or int(optimizer.rejections) == 0


def test_fixed_step_ignores_the_loss_and_keeps_its_state_format() -> None:
    a, b = start(), start()
    with_loss, without = LBFGS(a, lr=0.5, history_size=4), LBFGS(b, lr=0.5, history_size=4)
    for _ in range(15):
        with_loss.step(gradient(a), objective(a))
        without.step(gradient(b))
    assert torch.equal(a, b)
    assert "direction" not in with_loss.state_dict()  # checkpoints from before still load
    with pytest.raises(ValueError, match="line_search"):
        LBFGS(torch.zeros(24), line_search="armijo").step(torch.zeros(24))


def test_armijo_state_round_trip() -> None:
    x = start(seed=1)
    optimizer = LBFGS(x, lr=20.0, history_size=4, line_search="armijo")
    search_path(objective, x, optimizer, 9)
    assert int(optimizer.rejections) > 0  # saved in the middle of a backtracking search
    state, saved = copy.deepcopy(optimizer.state_dict()), x.clone()
    expected = search_path(objective, x, optimizer, 8)

    resumed = saved.clone()
    fresh = LBFGS(resumed, lr=20.0, history_size=4, line_search="armijo")
    fresh.load_state_dict(state)
    assert search_path(objective, resumed, fresh, 8) == expected
    with pytest.raises(ValueError, match="missing direction"):
        fresh.load_state_dict(LBFGS(torch.zeros(24), history_size=4).state_dict())


def test_armijo_restarts_after_max_backtracks() -> None:
    """A direction that never decreases the loss is given up after max_backtracks trials."""
    x = torch.tensor([3.0, -2.0], dtype=torch.float64)
    optimizer = LBFGS(x, history_size=3, line_search="armijo", max_backtracks=3)
    value, grad = loss_and_gradient(ill_conditioned_quadratic, x)
    optimizer.step(grad, value)
    optimizer.direction.neg_()  # an ascent direction: every trial along it is rejected
    x.copy_(optimizer.prev_flat + optimizer.trial_step * optimizer.direction)
    losses, accepted = search_path(ill_conditioned_quadratic, x, optimizer, 4)
    assert accepted == [False, False, False, True]
    assert losses[-1] < losses[0]


def boxed_quadratic(x: torch.Tensor) -> torch.Tensor:
    """Ill-conditioned quadratic whose unconstrained minimiser lies outside [0, 1] in half the
    coordinates: the box-constrained minimiser sits on the bounds there."""
    scales = torch.logspace(0, 2, x.numel(), dtype=x.dtype)
    centre = torch.linspace(-0.5, 1.5, x.numel(), dtype=x.dtype)
    return 0.5 * (scales * (x - centre) ** 2).sum()


def test_armijo_with_bounds_converges_to_the_minimiser_on_the_boundary() -> None:
    """Projected search: iterates stay in the box, accepted losses never rise, and the
    minimiser (the centre clamped to [0, 1]) is reached."""
    x0 = torch.full((40,), 0.5, dtype=torch.float64)
    minimum = boxed_quadratic(torch.linspace(-0.5, 1.5, 40, dtype=torch.float64).clamp(0, 1))
    x = x0.clone()
    optimizer = LBFGS(x, history_size=10, line_search="armijo", bounds=(0.0, 1.0))
    losses, accepted = search_path(boxed_quadratic, x, optimizer, 60)
    kept = [value for value, ok in zip(losses, accepted, strict=True) if ok]
    assert all(b <= a for a, b in itertools.pairwise(kept))
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert min(losses) - float(minimum) < 1e-8


def test_armijo_stores_curvature_pairs_on_free_coordinates_only() -> None:
    """A pixel held at its bound does not move, but its gradient still changes with other
    pixels (here x0, pushed below 0, is coupled to x4): that change is not curvature along
    the step, so the stored pairs must be zero there, and gamma = s.y / y.y over the rest."""

    def coupled(x: torch.Tensor) -> torch.Tensor:
        centre = torch.linspace(-1.0, 0.9, x.numel(), dtype=x.dtype)
        scales = torch.linspace(1, 4, x.numel(), dtype=x.dtype)
        return 0.5 * (scales * (x - centre) ** 2).sum() + 3.0 * x[0] * x[4]

    x = torch.full((6,), 0.5, dtype=torch.float64)
    x[0] = 0.0
    optimizer = LBFGS(x, history_size=4, line_search="armijo", bounds=(0.0, 1.0))
    search_path(coupled, x, optimizer, 8)
    stored = int(optimizer.stored)
    assert stored >= 2 and float(x[0]) == 0.0
    assert torch.all(optimizer.history[:, 0] == 0)  # every s and y row; empty slots are 0
    s, y = optimizer.history[(stored - 1) % 4], optimizer.history[4 + (stored - 1) % 4]
    assert float(optimizer.gamma) == pytest.approx(float(s @ y / (y @ y)))


def test_armijo_grows_the_step_where_the_loss_curves_down() -> None:
    """Negative curvature (no curvature pair is ever stored): the trial step doubles instead
    of staying at lr, so a flat, concave loss reaches the bound in a few evaluations."""
    x = torch.full((8,), 0.5, dtype=torch.float64)
    optimizer = LBFGS(x, history_size=5, line_search="armijo", bounds=(0.0, 1.0))
    search_path(lambda v: -1e-3 * ((v - 0.4) ** 2).sum(), x, optimizer, 40)
    assert int(optimizer.stored) == 0
    assert torch.equal(optimizer.iterate, torch.ones(8, dtype=torch.float64))


def tiny_synthesizer(
    device: str, optimizer: str, precision: str, cuda_graph: bool | None, line_search: str = "none"
):
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
    return Synthesizer(
        loss, content, optimizer, lr, 20, precision=precision, cuda_graph=cuda_graph,
        line_search=line_search,
    )  # fmt: skip


def test_synthesizer_is_eager_on_cpu() -> None:
    synth = tiny_synthesizer("cpu", "lbfgs", "fp32", cuda_graph=True)
    assert synth.graph is None
    terms = synth.step()
    assert set(terms) >= {"total", "content", "style", "tv"} and synth.step_count == 1


def test_synthesizer_line_search_one_forward_per_step() -> None:
    synth = tiny_synthesizer("cpu", "lbfgs", "fp32", cuda_graph=False, line_search="armijo")
    calls = []
    synth.loss.encoder.register_forward_hook(lambda *_: calls.append(1))
    totals = [float(synth.step()["total"]) for _ in range(8)]
    assert len(calls) == 8 and synth.step_count == 8
    assert synth.optimizer.base_loss <= totals[0] and min(totals) < totals[0]


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam", "lbfgs+armijo"])
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
    optimizer, _, search = optimizer.partition("+")
    graphed = tiny_synthesizer("cuda", optimizer, precision, True, search or "none")
    trajectory = torch.stack([graphed.step()["total"] for _ in range(6)])  # 3 eager, capture, 2
    assert graphed.graph is not None and graphed.graph.captured
    eager = tiny_synthesizer("cuda", optimizer, precision, False, search or "none")
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


@pytest.mark.parametrize(
    ("optim", "message"),
    [({"line_search": "wolfe"}, "use auto, none or armijo"),
     ({"name": "adam", "line_search": "armijo"}, "optim=lbfgs only")],
)  # fmt: skip
def test_config_rejects_unknown_or_misplaced_line_search(optim: dict, message: str) -> None:
    from stylelab.config import Config, LayersConfig, OptimConfig, validate
    from stylelab.errors import StyleLabError

    layers = LayersConfig(name="t", style=[0], content=[7])
    validate(Config(layers=layers, optim=OptimConfig(line_search="armijo")))
    validate(Config(layers=layers, optim=OptimConfig(name="adam")))  # auto: none for Adam
    assert make_optimizer("lbfgs", torch.zeros(3), lr=1.0, line_search="auto").line_search == (
        "armijo"
    )
    with pytest.raises(StyleLabError, match=message):
        validate(Config(layers=layers, optim=OptimConfig(**optim)))
    with pytest.raises(ValueError, match="L-BFGS only"):
        make_optimizer("adam", torch.zeros(3), lr=0.1, line_search="armijo")
