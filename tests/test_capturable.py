"""The whole step a CUDA graph captures, run on CPU with every host read forbidden.

`GraphedStep` captures `Synthesizer._step` (single image) and `BatchedStep._step` (a batch of
jobs): forward through VGG, every term, backward, the optimiser update, clamp, best iterate and
EMA. After the eager warm-up steps the real capture path takes, the next steps must not read a
tensor's value on the host (`tests.conftest.no_host_reads`), for every feature a run can have.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.gpu_acceptance import FEATURES as GPU_FEATURES
from stylelab.engine.batch import BatchedStep, shared_encoder
from stylelab.engine.cuda_graph import WARMUP
from stylelab.engine.optim import Adam
from stylelab.engine.synthesis import Synthesizer
from stylelab.factory import build_synthesis, sharing_vgg
from tests.conftest import no_host_reads
from tests.test_batch import VARIED, config

GUARDED = 3  # steps checked after the warm-up
SMALL_W2 = "layers.style=[0,5,10]"  # W2's matrix square roots, up to 256 channels: cheap on CPU
# The features benchmarks/gpu_run.sh runs captured on a GPU (W2 on smaller layers here).
FEATURES = {
    name: [*overrides, *([SMALL_W2] if "statistic=w2" in overrides else [])]
    for name, overrides in GPU_FEATURES.items()
}


def as_on_cuda(synth: Synthesizer) -> Synthesizer:
    """Adam as CUDA runs it: torch's fused kernel. CPU's default (unfused) Adam reads its step
    count with `.item()` (torch's code, which CUDA's capturable Adam does not run)."""
    if isinstance(synth.optimizer, Adam):
        param, unfused = synth.optimizer.param, synth.optimizer.optimizer
        fused = torch.optim.Adam([param], **unfused.defaults | {"fused": True})
        fused.state.update(unfused.state)  # a pyramid stage's carried moments
        synth.optimizer.optimizer = fused
    return synth


def guarded_steps(synth: Synthesizer) -> None:
    """Warm up as `GraphedStep` does, then run the captured function with host reads forbidden
    (its output is counted outside, as a replay's is)."""
    as_on_cuda(synth)
    for _ in range(WARMUP):
        synth.step()
    for _ in range(GUARDED):
        with no_host_reads("Synthesizer._step"):
            values = synth._step()
        synth.record(values)
    assert torch.isfinite(values).all()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("overrides", FEATURES.values(), ids=FEATURES.keys())
def test_the_captured_step_reads_nothing_back(overrides: list[str]) -> None:
    synthesis = build_synthesis(config(*overrides)).synthesis
    guarded_steps(synthesis.enter_stage(0))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("optim", ["lbfgs", "adam"])
def test_a_pyramids_second_stage_reads_nothing_back(optim: str) -> None:
    """After the first stage: targets rebuilt at the new size, image upsampled, Adam's moments
    carried over (L-BFGS restarted)."""
    pyramid = ["schedule=pyramid", "schedule.sizes=[32,48]", "image_size=48", "steps=4"]
    synthesis = build_synthesis(config(*pyramid, f"optim={optim}", "optim.ema=0.5")).synthesis
    first = synthesis.enter_stage(0)
    for _ in range(4):
        first.step()
    second = synthesis.enter_stage(1)
    assert second.image.shape[-1] == 48
    guarded_steps(second)


def test_bf16_autocast_runs_on_this_cpu() -> None:
    """The bf16 cases above run under CPU autocast (where a CPU lacks it, this fails first)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.nn.functional.conv2d(torch.rand(1, 3, 8, 8), torch.rand(4, 3, 3, 3))
    assert out.dtype == torch.bfloat16


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("optim", ["lbfgs", "adam"])
def test_the_captured_batched_step_reads_nothing_back(optim: str) -> None:
    """K=3 jobs of different weights, layer sets and learning rates in one batched step."""
    with sharing_vgg():
        built = [build_synthesis(config(*job, f"optim={optim}")) for job in VARIED]
    synths = [as_on_cuda(b.synthesis.enter_stage(0)) for b in built]
    step = BatchedStep(synths, shared_encoder([s.loss.encoder for s in synths]))
    for _ in range(WARMUP):
        step()
    for _ in range(GUARDED):
        with no_host_reads("BatchedStep._step"):
            values = step._step()
        for synth, row in zip(synths, values.split(step.sizes), strict=True):
            synth.record(row)
    assert torch.isfinite(values).all()


def test_a_planted_host_read_fails_the_check(monkeypatch) -> None:
    """The check has teeth: one `.item()` inside the update is caught, single and batched."""
    update = Synthesizer.update

    def planted(self, terms, grad):
        terms["total"].item()
        return update(self, terms, grad)

    monkeypatch.setattr(Synthesizer, "update", planted)
    with pytest.raises(AssertionError, match=r"Tensor.item called inside Synthesizer._step"):
        guarded_steps(build_synthesis(config()).synthesis.enter_stage(0))
    with sharing_vgg():
        synths = [build_synthesis(config(*job)).synthesis.enter_stage(0) for job in VARIED]
    step = BatchedStep(synths, shared_encoder([s.loss.encoder for s in synths]))
    step()
    caught = pytest.raises(AssertionError, match=r"Tensor.item called inside BatchedStep._step")
    with caught, no_host_reads("BatchedStep._step"):
        step._step()


@pytest.mark.parametrize(
    "read",
    [
        lambda t: t.item(),
        lambda t: bool(t),
        lambda t: float(t),
        lambda t: int(t),
        lambda t: [0, 1][t],
        lambda t: t.tolist(),
        lambda t: t.numpy(),
        lambda t: t.cpu(),
        lambda t: t.to("cpu"),
        lambda t: t.to(device=torch.device("cpu")),
    ],
    ids=["item", "bool", "float", "int", "index", "tolist", "numpy", "cpu", "to_cpu", "to_device"],
)
def test_every_kind_of_host_read_is_caught(read) -> None:
    t = torch.ones((), dtype=torch.long)
    with no_host_reads(), pytest.raises(AssertionError, match="host read"):
        read(t)
    with no_host_reads():  # moving to another dtype stays allowed
        assert t.to(torch.float32).dtype == torch.float32
