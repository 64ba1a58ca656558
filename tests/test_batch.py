"""The batched engine (stylelab.engine.batch): a job in a batch takes the steps it takes alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import stylelab.run  # noqa: F401  (registers the structured config)
from stylelab.config import Config
from stylelab.engine.batch import BatchedStep, BatchJob, run_batch, shared_encoder
from stylelab.engine.loop import Observer, Row
from stylelab.engine.observers import NonFiniteGuard
from stylelab.errors import DivergenceError
from stylelab.factory import build_synthesis, sharing_vgg

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["model.weights=random", "image_size=32", "logger=none", "device=cpu", "precision=fp32"]
QUICK += ["log.flush_every=5", "log.image_every=100", "batch_invariant=true"]
# Jobs that differ in style weight, layers and learning rate (and, for L-BFGS, history size).
VARIED = [
    ["style_weight=1e6", "layers=approach1"],
    ["style_weight=1e3", "layers=approach2", "optim.lr=0.5"],
    ["style_weight=1e4", "layers=approach2", "tv_weight=1e-4", "pair.style=skimage:chelsea"],
]


def config(*overrides: str) -> Config:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=[*QUICK, *overrides]))


class Rows(Observer):
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def on_losses(self, rows: list[Row]) -> None:
        self.rows += rows


def alone(cfg: Config) -> list[Row]:
    rows = Rows()
    build_synthesis(cfg).synthesis.run([rows])
    return rows.rows


def batched(cfgs: list[Config]) -> tuple[list, list[Rows]]:
    with sharing_vgg():
        built = [build_synthesis(cfg) for cfg in cfgs]
    observers = [Rows() for _ in cfgs]
    jobs = [BatchJob(b.synthesis, [o]) for b, o in zip(built, observers, strict=True)]
    return run_batch(jobs), observers


def assert_same_rows(got: list[Row], want: list[Row], rel: float = 1e-5) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in b:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-9), (b["step"], key)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("optim", ["lbfgs", "adam"])
def test_each_job_in_a_batch_takes_its_own_steps(optim: str) -> None:
    cfgs = [config(f"optim={optim}", "steps=30", *job) for job in VARIED]
    if optim == "adam":
        cfgs[1].optim.lr, cfgs[2].optim.lr = 0.02, 0.05
    outcomes, observers = batched(cfgs)
    for cfg, outcome, observer in zip(cfgs, outcomes, observers, strict=True):
        assert outcome.status == "finished" and outcome.step == 30
        assert_same_rows(observer.rows, alone(cfg))
        assert observer.rows[-1]["total"] < observer.rows[0]["total"]


def test_jobs_without_a_shared_vgg_or_shape_are_refused() -> None:
    first, second = (build_synthesis(config("steps=2")) for _ in range(2))
    encoders = [b.synthesis.objective.encoder for b in (first, second)]
    with pytest.raises(ValueError, match="share one VGG"):
        shared_encoder(encoders)
    with sharing_vgg():
        small, large = build_synthesis(config()), build_synthesis(config("image_size=48"))
    synths = [b.synthesis.enter_stage(0) for b in (small, large)]
    with pytest.raises(ValueError, match="one shape"):
        BatchedStep(synths, shared_encoder([s.loss.encoder for s in synths]))


def test_a_diverging_job_stops_alone_and_keeps_its_last_finite_image(tmp_path: Path) -> None:
    cfgs = [config("steps=12", "optim=adam"), config("steps=12", "optim=adam", "optim.lr=0.03")]
    with sharing_vgg():
        built = [build_synthesis(cfg) for cfg in cfgs]
    saved: list[torch.Tensor] = []
    guard = NonFiniteGuard(lambda image: saved.append(image.clone()) or tmp_path / "final.png")
    poisoned = built[0].synthesis.objective.terms[0]
    calls = {"n": 0}

    def hook(module, args, output):  # NaN from the job's 7th evaluation on
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 6 else output

    poisoned.register_forward_hook(hook)
    rows = [Rows(), Rows()]
    outcomes = run_batch(
        [BatchJob(built[0].synthesis, [guard, rows[0]]), BatchJob(built[1].synthesis, [rows[1]])]
    )
    assert isinstance(outcomes[0], DivergenceError) and "step 6" in str(outcomes[0])
    assert saved and torch.isfinite(saved[0]).all()
    assert [r["step"] for r in rows[0].rows] == [0, 1, 2, 3, 4, 5]
    assert outcomes[1].status == "finished" and outcomes[1].step == 12
    assert_same_rows(rows[1].rows, alone(cfgs[1]))


def test_out_of_memory_splits_the_batch_and_each_half_finishes(monkeypatch, caplog) -> None:
    cfgs = [config("steps=6", "optim=adam", f"optim.lr={lr}") for lr in (0.01, 0.02, 0.03)]
    real_step = BatchedStep._step

    def limited(self):  # "out of memory" for any batch of more than one image
        if len(self.synths) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self)

    monkeypatch.setattr(BatchedStep, "_step", limited)
    outcomes, observers = batched(cfgs)
    assert "retrying as batches of 1 and 2" in caplog.text
    for cfg, outcome, observer in zip(cfgs, outcomes, observers, strict=True):
        assert outcome.status == "finished"
        assert_same_rows(observer.rows, alone(cfg))


def test_a_stop_request_interrupts_every_job_at_the_same_step() -> None:
    cfgs = [config("steps=20", "optim=adam", f"optim.lr={lr}") for lr in (0.01, 0.02)]
    with sharing_vgg():
        built = [build_synthesis(cfg) for cfg in cfgs]
    states: list[dict] = []

    class Checkpoints(Observer):
        def on_checkpoint(self, state: dict) -> None:
            states.append(state)

    # As a signal would: every job's stop flag is set between the same two steps.
    jobs = [
        BatchJob(b.synthesis, [Checkpoints()], lambda b=b: b.synthesis.synth.step_count >= 11)
        for b in built
    ]
    outcomes = run_batch(jobs)
    assert [o.status for o in outcomes] == ["interrupted", "interrupted"]
    assert [s["synthesis"]["step"] for s in states] == [11, 11]
    # Each continues from its checkpoint to the same losses as an uninterrupted run.
    with sharing_vgg():
        again = [build_synthesis(cfg) for cfg in cfgs]
    rows = [Rows(), Rows()]
    resumed = run_batch(
        [BatchJob(b.synthesis, [r], resume=s) for b, r, s in zip(again, rows, states, strict=True)]
    )
    assert [o.step for o in resumed] == [20, 20]
    for cfg, observer in zip(cfgs, rows, strict=True):
        assert_same_rows(observer.rows, [r for r in alone(cfg) if r["step"] >= 11])


def test_a_stop_request_arriving_between_two_jobs_stops_them_at_one_step() -> None:
    cfgs = [config("steps=12", "optim=adam", f"optim.lr={lr}") for lr in (0.01, 0.02)]
    with sharing_vgg():
        built = [build_synthesis(cfg) for cfg in cfgs]
    asked = iter(range(1000))
    # A signal landing while the batch asks its jobs: the 8th question (the second job's at
    # step 4) is the first answered yes; asking each job for itself stopped the second job a
    # step before the first.
    jobs = [BatchJob(b.synthesis, [], lambda: next(asked) >= 7) for b in built]
    outcomes = run_batch(jobs)
    assert [o.status for o in outcomes] == ["interrupted", "interrupted"]
    assert outcomes[0].step == outcomes[1].step < 12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_captured_batched_step_matches_the_eager_one() -> None:
    cuda = ["device=cuda", "steps=12", "batch_invariant=false"]
    cfgs = [config(*cuda, *job) for job in VARIED[:2]]
    runs = []
    for graph in (False, True):
        with sharing_vgg():
            built = [build_synthesis(cfg) for cfg in cfgs]
        for b in built:
            b.synthesis.optim.cuda_graph = graph
        observers = [Rows() for _ in cfgs]
        jobs = [BatchJob(b.synthesis, [o]) for b, o in zip(built, observers, strict=True)]
        run_batch(jobs, cuda_graph=graph)
        runs.append(observers)
    for eager, captured in zip(*runs, strict=True):
        assert_same_rows(captured.rows, eager.rows, rel=1e-4)
