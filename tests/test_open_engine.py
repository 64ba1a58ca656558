"""The open engine: terms and their names, style blends, style scale, stages, resume inside a
stage, the averaged iterate and Adam's moments across stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylelab.config import Config, LayersConfig, PairConfig, validate
from stylelab.engine.features import VGGFeatures, load_vgg19_features
from stylelab.engine.loop import LoopSettings, Observer, OptimSettings, Synthesis
from stylelab.engine.losses import gram_matrix
from stylelab.engine.objective import Objective, gatys_objective, gatys_terms
from stylelab.engine.schedule import make_schedule, pyramid_sizes
from stylelab.errors import StyleLabError
from stylelab.factory import SourceImages, StageImages, build_synthesis
from tests.conftest import run_cli

STYLE, CONTENT = [0, 5], [7]  # conv1_1, conv2_1; conv2_2: shallow, for speed


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder() -> VGGFeatures:
    return VGGFeatures(load_vgg19_features("random", seed=0), STYLE + CONTENT)


def images(count: int, size: int = 24, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, size, size, generator=generator) for _ in range(count)]


# --- objective: names and blends ----------------------------------------------------------------


def test_names_come_from_the_terms(encoder: VGGFeatures) -> None:
    content, style = images(2)
    objective = gatys_objective(encoder, content, style, CONTENT, STYLE, tv_weight=1.0)
    values = objective(content)
    assert list(values) == objective.names
    assert objective.names == [
        "content/conv2_2", "style/conv1_1", "style/conv2_1", "content", "style", "tv", "total",
    ]  # fmt: skip
    assert values["total"] == values["content"] + values["style"] + values["tv"]


def test_blend_is_the_weighted_sum_of_the_styles_grams(encoder: VGGFeatures) -> None:
    content, style_a, style_b = images(3)
    objective = gatys_objective(encoder, content, [style_a, style_b], CONTENT, STYLE, blend=[7, 3])
    features_a, features_b = encoder(style_a), encoder(style_b)
    for term in objective.terms:
        if term.kind == "style":
            expected = 0.7 * gram_matrix(features_a[term.layer]) + 0.3 * gram_matrix(
                features_b[term.layer]
            )
            torch.testing.assert_close(term.losses[0].target, expected, rtol=1e-6, atol=0)


def test_a_blend_of_one_and_zero_is_exactly_the_single_style(encoder: VGGFeatures) -> None:
    content, style_a, style_b, probe = images(4)
    single = gatys_objective(encoder, content, style_a, CONTENT, STYLE)(probe)
    blended = gatys_objective(encoder, content, [style_a, style_b], CONTENT, STYLE, blend=[1, 0])
    for key, value in blended(probe).items():
        assert torch.equal(value, single[key]), key


def test_equal_blend_by_default_and_bad_blends_are_refused(encoder: VGGFeatures) -> None:
    content, style_a, style_b = images(3)
    default = gatys_objective(encoder, content, [style_a, style_b], CONTENT, STYLE)
    halves = gatys_objective(encoder, content, [style_a, style_b], CONTENT, STYLE, blend=[1, 1])
    assert torch.equal(default(content)["total"], halves(content)["total"])
    with pytest.raises(ValueError, match="2 blend weights given for 3 style images"):
        gatys_objective(encoder, content, [style_a] * 3, CONTENT, STYLE, blend=[1, 2])


# --- schedules and style scale ------------------------------------------------------------------


def test_pyramid_sizes_grow_by_the_factor_to_the_final_size() -> None:
    assert pyramid_sizes(512) == [128, 181, 256, 362, 512]
    assert pyramid_sizes(300, min_size=128, factor=2) == [128, 256, 300]
    assert pyramid_sizes(100, min_size=128) == [100]
    stages = make_schedule("pyramid", 512, 50, sizes=[256, 512], stage_steps=[300, 100])
    assert [(s.size, s.steps, s.first_step) for s in stages] == [(256, 300, 0), (512, 100, 300)]
    assert [s.steps for s in make_schedule("pyramid", 256, 40, min_size=128)] == [40, 40, 40]
    with pytest.raises(ValueError, match="must end at image_size=512"):
        make_schedule("pyramid", 512, 50, sizes=[128, 256])


def tiny_config(**overrides: object) -> Config:
    cfg = Config(
        pair=PairConfig(name="t", content="skimage:astronaut", style="skimage:coffee"),
        layers=LayersConfig(name="t", style=STYLE, content=CONTENT),
        image_size=32, steps=6, device="cpu", precision="fp32",
    )  # fmt: skip
    cfg.model.weights = "random"
    for key, value in overrides.items():
        target, _, name = key.rpartition(".")
        setattr(cfg if not target else getattr(cfg, target), name, value)
    return cfg


def test_style_scale_sizes_each_style_relative_to_the_stage() -> None:
    sources = SourceImages(Image.new("RGB", (200, 100)), [Image.new("RGB", (60, 90))])
    scaled = StageImages(sources, tiny_config(style_scale=0.5), torch.device("cpu"))
    content, (style,) = scaled(64)
    assert tuple(content.shape[-2:]) == (32, 64) and tuple(style.shape[-2:]) == (32, 21)
    fixed = StageImages(sources, tiny_config(style_size=45), torch.device("cpu"))
    assert tuple(fixed(128)[1][0].shape[-2:]) == (45, 30)


def test_style_size_and_style_scale_together_are_refused() -> None:
    with pytest.raises(StyleLabError, match=r"style_size=40 and style_scale=0\.5 both set"):
        validate(tiny_config(style_size=40, style_scale=0.5))


# --- the loop: stages, resume, averaging ---------------------------------------------------------


class Rows(Observer):
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.frames: list[tuple[int, tuple[int, ...]]] = []
        self.states: list[dict] = []

    def on_frame(self, step: int, image: np.ndarray) -> None:
        self.frames.append((step, image.shape))

    def on_losses(self, rows: list[dict]) -> None:
        self.rows += rows

    def on_checkpoint(self, state: dict) -> None:
        self.states.append(state)


def pyramid(optimizer: str = "lbfgs", ema: float = 0.0) -> Synthesis:
    cfg = tiny_config(image_size=40, steps=4)
    cfg.schedule.name, cfg.schedule.sizes = "pyramid", [32, 40]
    cfg.optim.name, cfg.optim.lr, cfg.optim.ema = (
        optimizer,
        1.0 if optimizer == "lbfgs" else 0.05,
        ema,
    )
    cfg.log.image_every, cfg.log.flush_every = 2, 3
    return build_synthesis(cfg).synthesis


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_stages_run_in_order_with_a_global_step(optimizer: str) -> None:
    observer = Rows()
    result = pyramid(optimizer).run([observer])
    assert result.status == "finished" and result.step == 8
    assert [(r["step"], r["stage"], r["size"]) for r in observer.rows] == [
        *((s, 0, 32) for s in range(4)), *((s, 1, 40) for s in range(4, 8)),
    ]  # fmt: skip
    assert observer.frames == [
        (0, (32, 32, 3)),
        (2, (32, 32, 3)),
        (4, (40, 40, 3)),
        (6, (40, 40, 3)),
    ]
    assert tuple(result.image.shape[-2:]) == (40, 40)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_resume_inside_the_second_stage_repeats_nothing(optimizer: str) -> None:
    straight = Rows()
    pyramid(optimizer, ema=0.5).run([straight])
    first = Rows()
    stopped = pyramid(optimizer, ema=0.5).run([first], should_stop=lambda: len(first.rows) >= 4)
    assert stopped.status == "interrupted" and stopped.step == 5  # inside stage 2 (steps 4..7)
    state = first.states[-1]
    assert state["stage"] == 1 and state["synthesis"]["ema"] is not None
    rest = Rows()
    resumed = pyramid(optimizer, ema=0.5).run([rest], resume=state)
    assert [r["step"] for r in first.rows + rest.rows] == list(range(8))
    for got, want in zip(first.rows + rest.rows, straight.rows, strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    assert resumed.step == 8


def test_the_averaged_iterate_is_the_bias_corrected_average_of_the_iterates() -> None:
    synthesis = pyramid("adam", ema=0.8)
    synth = synthesis.enter_stage(0)
    iterates, expected = [], None
    for _ in range(3):
        synth.step()
        iterates.append(synth.image.clone())
    weights = [0.2 * 0.8**k for k in (2, 1, 0)]
    expected = sum(w * x for w, x in zip(weights, iterates, strict=True)) / sum(weights)
    torch.testing.assert_close(synth.display_image, expected, rtol=1e-5, atol=1e-6)
    assert synth.output_image("best") is not synth.image  # ema wins over keep


def test_adam_carries_its_moments_into_the_next_stage() -> None:
    synthesis = pyramid("adam")
    first = synthesis.enter_stage(0)
    for _ in range(3):
        first.step()
    second = synthesis.enter_stage(1)
    (state,) = second.optimizer.optimizer.state.values()
    assert int(state["step"]) == 3 and tuple(state["exp_avg"].shape[-2:]) == (40, 40)


def test_best_iterate_is_the_lowest_total_evaluated() -> None:
    synthesis = pyramid("lbfgs")
    synth = synthesis.enter_stage(0)
    totals, images_seen = [], []
    for _ in range(4):
        images_seen.append(synth.image.clone())
        totals.append(float(synth.step()["total"]))
    best = int(np.argmin(totals))
    assert int(synth.best.index) == best
    assert torch.equal(synth.output_image("best"), images_seen[best])


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_two_stage_pyramid_with_two_styles_through_the_cli(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        "model.weights=random", "logger=none", "image_size=48", "schedule=pyramid",
        "schedule.sizes=[32,48]", "schedule.steps=[3,2]", "log.image_every=2",
        "pair.style=[skimage:hubble_deep_field,skimage:immunohistochemistry]",
        "pair.style_blend=[0.7,0.3]", f"hydra.run.dir={run_dir}",
        "keep=last",  # keep=best's result can equal the last frame, and the GIF merges the two
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    assert [(r["step"], r["stage"], r["size"]) for r in rows] == [
        (0, 0, 32), (1, 0, 32), (2, 0, 32), (3, 1, 48), (4, 1, 48),
    ]  # fmt: skip
    sizes = {p.name: Image.open(p).size for p in sorted((run_dir / "frames").glob("*.png"))}
    assert sizes == {"step_000000.png": (32, 32), "step_000002.png": (32, 32),
                     "step_000004.png": (48, 48)}  # fmt: skip
    with Image.open(run_dir / "synthesis.gif") as gif:
        assert gif.size == (48, 48) and gif.n_frames == 4
    assert (run_dir / "style.png").is_file() and (run_dir / "style_2.png").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 5


def test_objective_rejects_no_terms(encoder: VGGFeatures) -> None:
    with pytest.raises(ValueError, match="at least one term"):
        Objective(encoder, [])
    assert [t.name for t in gatys_terms([7], [0])] == ["content/conv2_2", "style/conv1_1", "tv"]


def test_settings_defaults_match_the_config() -> None:
    cfg = Config()
    assert OptimSettings().name == cfg.optim.name and OptimSettings().keep == cfg.keep
    assert LoopSettings().image_every == cfg.log.image_every
