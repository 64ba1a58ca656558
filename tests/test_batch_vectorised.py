"""The vectorised batch: one stacked objective and one batched L-BFGS for a batch's jobs.

With `batch_invariant=false` (the default) `BatchedStep` evaluates every job's terms through
`StackedObjective` and steps every L-BFGS job through `BatchedLBFGS`; these tests check that
both compute what the jobs' own objectives and optimisers compute.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from stylelab.engine.batch import BatchedStep, BatchJob, run_batch, shared_encoder
from stylelab.engine.batched_optim import BatchedAdam, BatchedLBFGS
from stylelab.engine.observers import NonFiniteGuard
from stylelab.engine.optim import LBFGS, Adam
from stylelab.engine.optimizers import batched_optimizer
from stylelab.engine.stacked import stacked_loss
from stylelab.engine.synthesis import Synthesizer
from stylelab.errors import DivergenceError
from stylelab.factory import build_synthesis, sharing_vgg
from tests.conftest import no_host_reads
from tests.test_batch import VARIED, Rows, config

VECTORISED = "batch_invariant=false"
# Different weights, layer sets, learning rates, TV, W2 next to Gram, masks: one batch.
MIXED = [
    *VARIED,
    ["statistic=w2", "layers.style=[0,5,10]", "optim.lr=0.7"],
    ["experiment=masks_offline", "tv_weight=1e-3", "tv_loss=l2"],
    ["pair=astronaut_blend", "layers.style_weights=[1,2,3,4,5]"],
]


def synths(jobs: list[list[str]], *overrides: str) -> list[Synthesizer]:
    with sharing_vgg():
        built = [build_synthesis(config(VECTORISED, *job, *overrides)) for job in jobs]
    return [b.synthesis.enter_stage(0) for b in built]


def batched_step(members: list[Synthesizer], vectorised: bool = True) -> BatchedStep:
    encoder = shared_encoder([s.loss.encoder for s in members])
    return BatchedStep(members, encoder, vectorised=vectorised)


@pytest.mark.usefixtures("one_thread")
def test_the_stacked_objective_gives_each_jobs_terms_and_gradient() -> None:
    members = synths(MIXED)
    step = batched_step(members)
    assert step.objective is not None and step.objective.groups  # something was stacked
    image = step._batch()
    matrix, grad = members[0].differentiate(image, stacked_loss(step.objective, step.encoder))
    results, want_grad = members[0].differentiate(image, step._each_job)
    for job, (row, result) in enumerate(zip(step.objective.rows(matrix), results, strict=True)):
        assert step.objective.names[job] == list(result)  # same names, same order
        want = torch.stack([value.float() for value in result.values()])
        torch.testing.assert_close(row, want, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-9)


def quadratic_problem(jobs: int, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Per job a convex quartic-plus-quadratic loss with its own curvature (float64)."""
    generator = torch.Generator().manual_seed(0)
    scale = torch.rand(jobs, size, generator=generator, dtype=torch.float64) * 5 + 0.1
    centre = torch.rand(jobs, size, generator=generator, dtype=torch.float64) * 1.4 - 0.2
    return scale, centre


def loss_and_grad(x: torch.Tensor, scale: torch.Tensor, centre: torch.Tensor):
    x = x.detach().requires_grad_(True)
    d = x.reshape(scale.shape) - centre
    loss = (scale * d.square() + d.pow(4)).sum(-1)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


@pytest.mark.parametrize("line_search", ["none", "armijo"])
def test_batched_lbfgs_takes_each_jobs_single_lbfgs_steps(line_search: str) -> None:
    jobs, steps = 3, 25
    scale, centre = quadratic_problem(jobs)
    start = torch.full((jobs, 1, 3, 4, 4), 0.5, dtype=torch.float64)
    settings = {"history_size": 4, "line_search": line_search, "bounds": (0.0, 1.0)}
    lrs = [1.0, 0.5, 0.25]
    alone = []
    for k in range(jobs):
        x = start[k].clone()
        optimizer = LBFGS(x, lr=lrs[k], **settings)
        for _ in range(steps):
            loss, grad = loss_and_grad(x, scale[k : k + 1], centre[k : k + 1])
            optimizer.step(grad, loss[0])
        alone.append((x, optimizer.state_dict()))
    singles = [LBFGS(start[k].clone(), lr=lrs[k], **settings) for k in range(jobs)]
    batched = BatchedLBFGS.adopt(singles)
    assert batched is not None
    for _ in range(steps):
        batched.step(*reversed(loss_and_grad(batched.param, scale, centre)))
    for k, (x, state) in enumerate(alone):
        torch.testing.assert_close(singles[k].param, x, rtol=1e-9, atol=1e-12)
        for key, value in singles[k].state_dict().items():  # each job's own checkpoint
            torch.testing.assert_close(value, state[key], rtol=1e-9, atol=1e-12, msg=key)
    # A job's checkpoint resumes alone: a fresh L-BFGS loaded from it takes the batch's next step.
    resumed = LBFGS(singles[1].param.clone(), lr=lrs[1], **settings)
    resumed.load_state_dict(singles[1].state_dict())
    loss, grad = loss_and_grad(resumed.param, scale[1:2], centre[1:2])
    resumed.step(grad, loss[0])
    batched.step(*reversed(loss_and_grad(batched.param, scale, centre)))
    torch.testing.assert_close(resumed.param, singles[1].param, rtol=1e-9, atol=1e-12)


def test_batched_adam_takes_each_jobs_adam_steps() -> None:
    jobs, steps, lrs = 3, 12, [0.02, 0.05, 0.1]
    scale, centre = quadratic_problem(jobs)
    scale, centre = scale.float(), centre.float()
    start = torch.rand(jobs, 1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    alone = []
    for k in range(jobs):
        optimizer = Adam(start[k].clone(), lr=lrs[k])
        for _ in range(steps):
            optimizer.step(loss_and_grad(optimizer.param, scale[k : k + 1], centre[k : k + 1])[1])
        alone.append(optimizer)
    singles = [Adam(start[k].clone(), lr=lrs[k]) for k in range(jobs)]
    batched = batched_optimizer(singles)
    assert isinstance(batched, BatchedAdam)
    for _ in range(steps):
        batched.step(loss_and_grad(batched.param, scale, centre)[1])
    for single, want in zip(singles, alone, strict=True):
        torch.testing.assert_close(single.param, want.param, rtol=1e-4, atol=1e-5)
        got, expected = single.state_dict()["state"][0], want.state_dict()["state"][0]
        for key in ("step", "exp_avg", "exp_avg_sq"):  # each job's own checkpoint
            torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    # A job resumed alone from its checkpoint steps on as its batch does.
    resumed = Adam(singles[2].param.clone(), lr=lrs[2])
    resumed.load_state_dict(copy.deepcopy(singles[2].state_dict()))  # as a checkpoint file
    resumed.step(loss_and_grad(resumed.param, scale[2:3], centre[2:3])[1])
    batched.step(loss_and_grad(batched.param, scale, centre)[1])
    torch.testing.assert_close(resumed.param, singles[2].param, rtol=1e-4, atol=1e-5)


def test_jobs_whose_optimisers_differ_keep_their_own() -> None:
    image = torch.rand(1, 3, 4, 4)
    assert batched_optimizer([LBFGS(image.clone()), LBFGS(image.clone(), history_size=5)]) is None
    assert batched_optimizer([LBFGS(image.clone()), Adam(image.clone())]) is None
    members = synths([VARIED[0], [*VARIED[1], "optim=adam"]])
    step = batched_step(members)
    assert step.objective is not None and step.optimizer is None
    assert all(torch.isfinite(terms["total"]) for terms in step())


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("line_search", ["armijo", "none"])
def test_the_vectorised_step_follows_the_per_job_step(line_search: str) -> None:
    """Same batch, same convolutions: the stacked objective and batched L-BFGS take the steps
    the jobs' own objectives and optimisers take (up to float rounding)."""
    runs = []
    for vectorised in (True, False):
        members = synths(MIXED[:4], f"optim.line_search={line_search}")
        step = batched_step(members, vectorised)
        assert (step.optimizer is not None) == vectorised
        runs.append([float(t["total"]) for _ in range(5) for t in step()])
    assert runs[0] == pytest.approx(runs[1], rel=5e-3)  # L-BFGS amplifies rounding


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "optim", ["optim.line_search=armijo", "optim.line_search=none", "optim=adam"]
)
def test_the_vectorised_step_reads_nothing_back(optim: str) -> None:
    members = synths(MIXED, optim)
    step = batched_step(members)
    for _ in range(3):
        step()
    for _ in range(2):
        with no_host_reads("BatchedStep._step"):
            values = step._step()
        for synth, row in zip(members, values.split(step.sizes), strict=True):
            synth.record(row)
    assert torch.isfinite(values).all()


@pytest.mark.usefixtures("one_thread")
def test_a_diverging_job_leaves_the_vectorised_batch_and_the_others_go_on(tmp_path: Path) -> None:
    jobs = [["statistic=w2", "layers.style=[0,5,10]"], VARIED[0], VARIED[1]]
    cfgs = [config(VECTORISED, "steps=8", *job) for job in jobs]
    runs = []
    for poisoned in (False, True):
        with sharing_vgg():
            built = [build_synthesis(cfg) for cfg in cfgs]
        if poisoned:
            style = next(t for t in built[0].synthesis.objective.terms if t.kind == "style")
            calls = iter(range(1000))

            def hook(module, args, output, calls=calls):  # NaN from the 5th evaluation on
                return output * float("nan") if next(calls) >= 4 else output

            style.register_forward_hook(hook)
        guard = NonFiniteGuard(lambda image: tmp_path / "final.png")
        rows = [Rows() for _ in built]
        jobs_ = [BatchJob(b.synthesis, [r]) for b, r in zip(built, rows, strict=True)]
        jobs_[0].observers = [guard, rows[0]]
        runs.append((run_batch(jobs_), rows))
    (_, healthy), (outcomes, rows) = runs
    assert isinstance(outcomes[0], DivergenceError) and "step 4" in str(outcomes[0])
    assert [o.status for o in outcomes[1:]] == ["finished", "finished"]
    for job in (1, 2):
        assert [r["step"] for r in rows[job].rows] == list(range(8))
        # Up to the NaN the others' rows are those of the healthy batch, bit for bit.
        assert rows[job].rows[:5] == healthy[job].rows[:5]
