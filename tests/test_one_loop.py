"""One stage loop: a single run is a batch of one, a plan runs twice alike, observers receive the
run's public state (`stylelab.engine.loop.RunState`)."""

from __future__ import annotations

import pytest
import torch

from stylelab.config import Config, LayersConfig, PairConfig
from stylelab.engine import batch
from stylelab.engine.loop import Observer, Result, Row, RunState, Synthesis
from stylelab.engine.schedule import Stage
from stylelab.engine.synthesis import Synthesizer
from stylelab.factory import build_synthesis

pytestmark = pytest.mark.usefixtures("one_thread")


def plan(optimizer: str = "adam", stages: int = 2) -> Synthesis:
    """Two stages (32, 40 px) of 4 steps each; Adam carries its moments between them."""
    cfg = Config(
        pair=PairConfig(name="t", content="skimage:astronaut", style="skimage:coffee"),
        layers=LayersConfig(name="t", style=[0, 5], content=[7]),
    )
    cfg.model.weights, cfg.device, cfg.precision = "random", "cpu", "fp32"
    cfg.image_size, cfg.steps = 40, 4
    if stages > 1:
        cfg.schedule.name, cfg.schedule.sizes = "pyramid", [32, 40]
    cfg.optim.name, cfg.optim.lr = optimizer, 1.0 if optimizer == "lbfgs" else 0.05
    cfg.log.image_every, cfg.log.flush_every = 2, 3
    return build_synthesis(cfg).synthesis


class Seen(Observer):
    """The rows, and what `on_stage` and `on_end` were given."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.stages: list[tuple[RunState, int, int, Stage]] = []
        self.ends: list[tuple[RunState, Result]] = []

    def on_stage(self, run: RunState, stage: Stage) -> None:
        self.stages.append((run, run.stage_index, run.step, stage))

    def on_losses(self, rows: list[Row]) -> None:
        self.rows += rows

    def on_end(self, run: RunState, result: Result) -> None:
        self.ends.append((run, result))


def test_a_single_run_goes_through_the_batch_driver_with_its_own_step(monkeypatch) -> None:
    batches: list[int] = []
    real_run_batch, real_step = batch.run_batch, Synthesizer.step
    steps = {"n": 0}

    def spy_run_batch(jobs, cuda_graph=None):
        batches.append(len(jobs))
        return real_run_batch(jobs, cuda_graph)

    def counted_step(self):
        steps["n"] += 1
        return real_step(self)

    def no_batched_step(*args, **kwargs):
        raise AssertionError("a batch of one steps through its own Synthesizer")

    monkeypatch.setattr(batch, "run_batch", spy_run_batch)
    monkeypatch.setattr(Synthesizer, "step", counted_step)
    monkeypatch.setattr(batch.BatchedStep, "__init__", no_batched_step)
    result = plan().run()
    assert batches == [1]
    assert result.status == "finished" and result.step == 8 and steps["n"] == 8
    assert result.step_path is not None and result.step_path.path == "eager"


def test_a_plan_runs_twice_with_the_same_result() -> None:
    synthesis = plan("adam")
    first, second = Seen(), Seen()
    one = synthesis.run([first])
    state = synthesis.state
    two = synthesis.run([second])
    assert synthesis.state is not state  # each run has its own state
    assert [r["step"] for r in first.rows] == list(range(8))
    assert second.rows == first.rows  # exactly: the second run starts afresh at stage 0
    assert torch.equal(one.image, two.image)
    assert (one.step, one.best_step, one.best_total) == (two.step, two.best_step, two.best_total)


def test_ending_early_is_the_runs_own_not_the_plans() -> None:
    class FinishNow(Observer):
        def on_stage(self, run: RunState, stage: Stage) -> None:
            run.finish_early("enough")

    synthesis = plan("lbfgs", stages=1)
    early = synthesis.run([FinishNow()])
    assert (early.stopped_early, early.step) == ("enough", 0)
    again = synthesis.run()
    assert (again.stopped_early, again.step) == (None, 4)


def test_observers_receive_the_public_run_state() -> None:
    synthesis, seen = plan("adam"), Seen()
    result = synthesis.run([seen])
    runs = {id(run) for run, *_ in seen.stages} | {id(run) for run, _ in seen.ends}
    assert runs == {id(synthesis.state)}
    assert [(index, step, stage.size) for _, index, step, stage in seen.stages] == [
        (0, 0, 32),
        (1, 4, 40),
    ]
    run, ended = seen.ends[0]
    assert isinstance(run, RunState) and ended is result
    assert run.synth is run.current and run.step == 8 == run.total_steps
    assert run.stop_reason is None and run.last_row == seen.rows[-1]
    state = run.state_dict(with_optimizer=False)
    assert state["stage"] == 1 and state["synthesis"]["step"] == 8
