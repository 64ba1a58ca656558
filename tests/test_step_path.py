"""Each run records how its steps ran: as a CUDA graph (with the capture's time) or eager, and why.

On CPU the capture is simulated: `GraphedStep` records the step with a fake graph (whose replay
calls the step again) or fails with a CUDA-like error, so the recording can be checked here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stylelab import runner
from stylelab.config import ScheduleConfig
from stylelab.engine import batch, synthesis
from stylelab.engine.batch import BatchJob, run_batch
from stylelab.engine.cuda_graph import GraphedStep, StepPath, combined, planned_path
from stylelab.factory import build_synthesis, sharing_vgg
from stylelab.report import Job, table_html
from stylelab.tracking import NullTracker, RunInfo
from tests.conftest import FAST, only_run_dir, run_cli, wandb_summary
from tests.test_batch import VARIED, config
from tests.test_robustness import tiny_config

ERROR = "CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors might be"


class FakeGraph:
    """Replays by calling the step again and copying its output into the captured one."""

    def __init__(self, fn, output: torch.Tensor):
        self.fn, self.output = fn, output

    def replay(self) -> None:
        self.output.copy_(self.fn())


@pytest.fixture
def fake_cuda(monkeypatch):
    """Steps on CPU take the CUDA-graph path; `capture` says whether the capture succeeds."""
    outcome = {"fails": False}

    def record(self):
        if outcome["fails"]:
            raise RuntimeError(ERROR)
        return FakeGraph(self.fn, self.fn()), self.fn().clone()

    for module in (synthesis, batch):
        monkeypatch.setattr(module, "planned_path", lambda device, enabled: StepPath("cuda_graph"))
    monkeypatch.setattr(GraphedStep, "_eager", lambda self: self.fn())
    monkeypatch.setattr(GraphedStep, "_synchronize", lambda self: None)
    monkeypatch.setattr(GraphedStep, "_record", record)
    return outcome


def summary_of(tmp_path: Path, **overrides) -> dict:
    info = RunInfo({}, tmp_path, "path")
    return runner.run_synthesis(tiny_config(**overrides), tmp_path, NullTracker(), info)


def test_the_eager_reason_names_the_device_or_the_config() -> None:
    assert planned_path(torch.device("cpu")) == StepPath("eager", "cpu")
    assert planned_path(torch.device("mps")) == StepPath("eager", "mps")
    assert planned_path(torch.device("cuda"), False) == StepPath("eager", "disabled by config")
    assert planned_path(torch.device("cuda"), True) == StepPath("cuda_graph")
    assert planned_path(torch.device("cuda:1")) == StepPath("cuda_graph")


def test_optim_cuda_graph_false_reaches_the_engine() -> None:
    built = build_synthesis(config("optim.cuda_graph=false"))
    assert built.synthesis.optim.cuda_graph is False
    assert build_synthesis(config()).synthesis.optim.cuda_graph is True


def test_paths_of_stages_or_batches_combine() -> None:
    graph = StepPath("cuda_graph", None, 0.5)
    both = combined([graph, StepPath("cuda_graph", None, 0.25)])
    assert both == StepPath("cuda_graph", None, 0.75)
    assert combined([graph, StepPath("eager", "capture failed: x")]).reason == "capture failed: x"
    assert combined([]) is None


def test_a_cpu_run_records_eager_in_its_summary_wandb_log_and_report(tmp_path: Path) -> None:
    done = run_cli(*FAST, "logger=wandb", "steps=3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["step_path"], summary["step_path_reason"]) == ("eager", "cpu")
    assert summary["capture_seconds"] is None
    recorded = wandb_summary(run_dir)["summary"]
    assert (recorded["step_path"], recorded["step_path_reason"]) == ("eager", "cpu")
    assert done.stderr.count("step path: eager (cpu)") == 1
    assert "<td>eager (cpu)</td>" in table_html([Job("0", {}, {}, summary)], [])


def test_a_captured_run_records_the_graph_and_its_capture_time(tmp_path, fake_cuda) -> None:
    summary = summary_of(tmp_path, steps=6)
    assert (summary["step_path"], summary["step_path_reason"]) == ("cuda_graph", None)
    assert summary["capture_seconds"] >= 0
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["step_path"] == "cuda_graph" and written["capture_seconds"] >= 0
    assert "<td>cuda_graph</td>" in table_html([Job("0", {}, {}, written)], [])


def test_a_failed_capture_records_eager_with_the_errors_first_line(tmp_path, fake_cuda) -> None:
    fake_cuda["fails"] = True
    summary = summary_of(tmp_path, steps=6)
    assert summary["step_path"] == "eager"
    assert summary["step_path_reason"] == f"capture failed: {ERROR.splitlines()[0]}"
    assert summary["capture_seconds"] is None


def test_a_run_shorter_than_the_warm_up_says_so(tmp_path, fake_cuda) -> None:
    summary = summary_of(tmp_path, steps=2)
    assert summary["step_path"] == "eager"
    assert summary["step_path_reason"].startswith("ended before the capture")


@pytest.mark.usefixtures("one_thread")
def test_batched_jobs_record_the_path_of_their_batch(fake_cuda) -> None:
    with sharing_vgg():
        built = [build_synthesis(config(*job, "steps=6")) for job in VARIED[:2]]
    outcomes = run_batch([BatchJob(b.synthesis) for b in built])
    for outcome in outcomes:
        assert outcome.step_path.path == "cuda_graph" and outcome.step_path.capture_seconds >= 0
    fake_cuda["fails"] = True
    with sharing_vgg():
        built = [build_synthesis(config(*job, "steps=6")) for job in VARIED[:2]]
    for outcome in run_batch([BatchJob(b.synthesis) for b in built]):
        assert outcome.step_path.reason.startswith("capture failed: CUDA error")


def test_a_batch_split_by_out_of_memory_records_the_halves_paths(monkeypatch, fake_cuda) -> None:
    """The batch that ran out of memory before its first step took no step: not recorded."""
    real_step = batch.BatchedStep._step

    def limited(self):
        if len(self.synths) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self)

    monkeypatch.setattr(batch.BatchedStep, "_step", limited)
    with sharing_vgg():
        built = [build_synthesis(config(*job, "steps=6")) for job in VARIED[:2]]
    for outcome in run_batch([BatchJob(b.synthesis) for b in built]):
        assert outcome.step_path.path == "cuda_graph", outcome.step_path


def test_a_pyramid_records_every_stages_capture(tmp_path, fake_cuda) -> None:
    schedule = ScheduleConfig(name="pyramid", sizes=[32, 48], steps=[5, 2])
    summary = summary_of(tmp_path, steps=7, image_size=48, schedule=schedule)
    assert summary["step_path_reason"].startswith("ended before the capture")  # 2 steps at 48
    schedule.steps = [5, 5]
    summary = summary_of(tmp_path / "again", steps=10, image_size=48, schedule=schedule)
    assert summary["step_path"] == "cuda_graph" and summary["capture_seconds"] >= 0
