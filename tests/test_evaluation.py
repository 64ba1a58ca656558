"""The evaluation protocol (stylelab-eval-1): what its numbers mean, that they ignore the run's
objective, and that runs and `python -m stylelab.evaluate` record them (random VGG weights:
these check meaning and plumbing, not style-transfer quality)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stylelab.config import Config
from stylelab.engine.color_distance import color_projections, color_quantiles, lab_pixels
from stylelab.engine.evaluation import EVAL_PROTOCOL, METRICS, Evaluator, float64_copy
from stylelab.engine.features import load_vgg19_features
from stylelab.errors import StyleLabError
from stylelab.evaluate import main as evaluate_main
from stylelab.evaluating import build_evaluator, read_image
from stylelab.outputs import RunFolder
from stylelab.runner import run_synthesis
from stylelab.tracking import RunInfo
from stylelab.tracking.base import NullTracker
from tests.conftest import cli_env, records_of, run_cli, run_python, wandb_records, wandb_summary
from tests.test_perceptual import config

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
# Style-weight setting where the trade-off shows with random weights (see test below).
TRADE_OFF = ["image_size=40", "steps=40", "tv_weight=0", "pair=astronaut_hubble"]
TRADE_OFF += ["layers.style=[relu1_1,relu2_1,relu3_1]", "layers.content=[relu3_1]"]


@pytest.fixture(scope="module")
def vgg() -> torch.nn.Sequential:
    return load_vgg19_features("random", seed=0)


def images(seed: int, *shape: int) -> torch.Tensor:
    return torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(seed))


def run(tmp_path: Path, *overrides: str) -> dict:
    """One in-process run (test_perceptual's quick settings); returns its summary."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = config(*overrides)
    return run_synthesis(cfg, tmp_path, NullTracker(), RunInfo({}, tmp_path, "test"))


def test_the_content_image_scores_zero_content_distance_and_full_ssim(vgg) -> None:
    content, style = images(0, 40, 48), images(1, 32, 32)
    metrics = Evaluator(vgg, content, [style])(content)
    assert metrics["eval/content"] == 0.0 and metrics["eval/ssim"] == pytest.approx(1.0)
    assert metrics["eval/style"] > 0.01 and metrics["eval/color"] > 0.1
    assert set(metrics) == set(METRICS)


def test_the_style_image_against_itself_scores_zero_style_and_colour_distance(vgg) -> None:
    style = images(1, 32, 40)
    metrics = Evaluator(vgg, images(0, 32, 40), [style])(style)
    assert metrics["eval/style"] == 0.0 and metrics["eval/color"] == pytest.approx(0, abs=1e-9)
    assert metrics["eval/content"] > 0.01


def test_a_blend_targets_the_blend_and_masks_weigh_regions_by_area(vgg) -> None:
    content, first, second, image = (
        images(0, 32, 32),
        images(1, 32, 32),
        images(2, 32, 32),
        images(3, 32, 32),
    )
    alone = Evaluator(vgg, content, [first])(image)
    ones, zeros = torch.ones(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
    first_everywhere = Evaluator(vgg, content, [first, second], masks=[ones, zeros])(image)
    assert first_everywhere == alone  # the empty region counts for nothing
    all_first = Evaluator(vgg, content, [first, second], blend=[1, 0])(image)
    assert all_first["eval/style"] == pytest.approx(alone["eval/style"], rel=1e-6)
    assert all_first["eval/color"] == pytest.approx(alone["eval/color"], rel=1e-9)
    half = Evaluator(vgg, content, [first, second])(image)
    assert half["eval/style"] != pytest.approx(alone["eval/style"], rel=1e-3)


def test_the_evaluators_float64_copy_leaves_the_runs_vgg_as_it_was(vgg) -> None:
    """The evaluator's encoder: float64 copies of the run's weights, the run's VGG untouched."""
    before = {name: (p.clone(), p.requires_grad) for name, p in vgg.named_parameters()}
    copied = float64_copy(vgg)
    assert [type(m) for m in copied] == [type(m) for m in vgg]
    for name, parameter in copied.named_parameters():
        original = before[name][0]
        assert parameter.dtype == torch.float64 and not parameter.requires_grad
        assert torch.equal(parameter, original.double())  # exact: every float32 is a float64
        assert parameter.data_ptr() != dict(vgg.named_parameters())[name].data_ptr()
    for name, parameter in vgg.named_parameters():
        assert parameter.dtype == torch.float32 and parameter.requires_grad == before[name][1]
        assert torch.equal(parameter, before[name][0])
    evaluator = Evaluator(vgg, images(0, 32, 32), [images(1, 32, 32)])
    assert all(p.dtype == torch.float64 for p in evaluator.encoder.parameters())
    assert all(p.dtype == torch.float32 for p in vgg.parameters())


def test_colour_quantiles_are_within_one_bin_of_the_exact_ones() -> None:
    lab = lab_pixels(images(7, 48, 48))
    levels = (np.arange(256) + 0.5) / 256
    exact = np.quantile(color_projections() @ lab.T, levels, axis=1, method="inverted_cdf").T
    assert np.abs(color_quantiles(lab, None) - exact).max() <= 420 / 4096
    halves = np.repeat([1.0, 0.0], lab.shape[0] // 2)  # weights: the first half only
    first = color_quantiles(lab[: lab.shape[0] // 2], None)
    assert np.abs(color_quantiles(lab, halves) - first).max() < 1e-9


def test_runs_of_different_objectives_evaluate_an_image_identically(vgg) -> None:
    image = images(5, 32, 32)
    numbers = []
    for overrides in (
        ["layers=approach1", "style_weight=1e3"],
        ["layers=approach2", "style_loss=w2", "color=histogram", "style_scale=0.5"],
        ["layers=gatys", "content_weight=5", "schedule=pyramid", "schedule.min_size=16"],
    ):
        evaluator = build_evaluator(config(*overrides), CPU, vgg=vgg)
        numbers.append(evaluator(image))
    assert numbers[0] == numbers[1] == numbers[2]


def test_raising_style_weight_1000x_lowers_style_and_raises_content_distance(
    tmp_path: Path,
) -> None:
    """With random weights and the default tv_weight=10 the 1e3 run's objective is mostly TV,
    which blurs the image away from the content: TV is off here so style and content trade."""
    low = run(tmp_path / "low", *TRADE_OFF, "style_weight=1e3")
    high = run(tmp_path / "high", *TRADE_OFF, "style_weight=1e6")
    assert high["eval/style"] < 0.5 * low["eval/style"]
    assert high["eval/content"] > 2 * low["eval/content"]


def test_a_run_whose_evaluation_fails_keeps_its_outputs_and_says_so(tmp_path: Path) -> None:
    # 12 px is enough for the run's shallow layers, not for the protocol's relu5_1.
    summary = run(tmp_path, "image_size=12", "layers.style=[relu1_1]", "layers.content=[relu1_2]")
    assert summary["status"] == "finished" and "final/total" in summary
    assert "16 px" in summary["eval/error"] and "\n" not in summary["eval/error"]
    assert not any(key in summary for key in METRICS)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["eval/error"] == summary["eval/error"] and written["status"] == "finished"
    for name in ("final.png", "losses.jsonl", "synthesis.gif", "checkpoint.pt"):
        assert (tmp_path / name).exists(), name


def test_a_failing_evaluation_every_n_steps_does_not_stop_the_run(tmp_path: Path) -> None:
    summary = run(tmp_path, "image_size=12", "layers.style=[relu1_1]", "layers.content=[relu1_2]",
                  "eval.every=1")  # fmt: skip
    assert summary["status"] == "finished" and "eval/error" in summary
    assert not (tmp_path / "eval.jsonl").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["missing.png", "--content", "skimage:astronaut", "--style", "skimage:coffee"], "not found"),
        (["corrupt.png", "--content", "skimage:astronaut", "--style", "skimage:coffee"], "corrupt.png is not an image"),
        (["corrupt.png"], "give --content and --style"),
        (["."], "holds no config.yaml"),
    ],
)  # fmt: skip
def test_evaluate_names_a_bad_image_in_one_line(
    tmp_path: Path, monkeypatch, capsys, args: list[str], fragment: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert evaluate_main([*args, "--weights", "random"]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1 and fragment in lines[0] and lines[0].startswith("error: ")
    assert captured.out == ""


def test_evaluate_an_image_against_given_inputs(tmp_path: Path, capsys) -> None:
    from stylelab.engine.sources import load_skimage

    load_skimage("coffee").resize((48, 32)).save(tmp_path / "coffee.png")
    args = [str(tmp_path / "coffee.png"), "--content", str(tmp_path / "coffee.png")]
    assert (
        evaluate_main([*args, "--style", "skimage:hubble_deep_field", "--weights", "random"]) == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["eval/content"] == 0.0 and metrics["eval/protocol"] == EVAL_PROTOCOL


def test_eval_every_must_be_positive() -> None:
    from stylelab.config import validate

    cfg = config("eval.every=0")
    with pytest.raises(StyleLabError, match=r"eval.every=0: must be >= 1"):
        validate(cfg)
    assert Config().eval.every is None


def test_resume_drops_evaluations_it_will_redo(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.append_losses([{"step": s, "total": 1.0} for s in range(6)])
    folder.append_eval([{"step": 1, "eval/content": 0.1}, {"step": 3, "eval/content": 0.2}])
    folder.truncate_losses(before_step=3)
    assert folder.read_eval() == [{"step": 1, "eval/content": 0.1}]
    assert [row["step"] for row in folder.read_losses()] == [0, 1, 2]


@pytest.mark.slow
def test_a_run_records_the_protocol_everywhere_and_evaluate_repeats_it(tmp_path: Path) -> None:
    """Through the CLI with W&B offline: summary.json, eval.jsonl, W&B history, summary and
    comparison table; `python -m stylelab.evaluate RUN_DIR` prints the summary's numbers."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "model.weights=random", "image_size=32", "steps=4", "eval.every=2", "log.flush_every=2",
        "logger.mode=offline", f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval/protocol"] == EVAL_PROTOCOL
    assert all(isinstance(summary[key], float) for key in METRICS)
    rows = RunFolder(run_dir).read_eval()
    assert [row["step"] for row in rows] == [1, 3]
    assert {key: rows[-1][key] for key in METRICS} == {key: summary[key] for key in METRICS}

    history = [h["item"] for h in records_of(wandb_records(run_dir), "history")]
    history = [row for row in history if "eval/style" in row]
    assert [row["step"] for row in history] == [1, 3]
    logged = wandb_summary(run_dir)["summary"]
    assert all(logged[key] == summary[key] for key in [*METRICS, "eval/protocol"])
    (table_file,) = (run_dir / "wandb").glob("offline-run-*/files/media/**/comparison*.table.json")
    table = json.loads(table_file.read_text())
    assert {*METRICS, "eval/protocol"} <= set(table["columns"])

    evaluated = run_python(["-m", "stylelab.evaluate", str(run_dir)], run_dir, cli_env())
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout) == {
        key: summary[key] for key in [*METRICS, "eval/protocol"]
    }
    assert read_image(run_dir / "final.png").shape[-1] == 32


def test_a_run_with_blended_masked_styles_is_evaluated_against_its_regions(tmp_path: Path) -> None:
    from tests.test_perceptual import HALVES, TWO_STYLES

    summary = run(tmp_path, TWO_STYLES, HALVES, "pair.style_blend=[3,1]", "color=luminance")
    assert "eval/error" not in summary, summary.get("eval/error")
    cfg = config(TWO_STYLES, HALVES, "pair.style_blend=[3,1]")
    again = build_evaluator(cfg, CPU)(read_image(tmp_path / "final.png"))
    assert again == {key: summary[key] for key in METRICS}
    unmasked = build_evaluator(config(TWO_STYLES), CPU)(read_image(tmp_path / "final.png"))
    assert unmasked["eval/style"] != summary["eval/style"]
