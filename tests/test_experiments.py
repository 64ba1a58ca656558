"""The studies in experiments/: presets, W&B sweep files, make targets, the gallery script, READMEs."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

import stylelab.run  # noqa: F401  (registers the schema)
from stylelab.report import Job, choose_axes, plot_keys

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
# study folder: (preset on the write-up's pairs, offline preset, make target, grid of the offline preset)
STUDIES = {
    "layer_study": ("layer_study", "layer_study_offline", "study-layers", {
        "pair": ["astronaut_hubble", "chelsea_immuno", "coffee_hubble", "rocket_immuno"],
        "layers": ["approach1", "approach2"],
    }),
    "style_weight_study": ("style_weight_study", "style_weight_study_offline", "study-style-weight", {
        "pair": ["astronaut_hubble", "chelsea_immuno"], "style_weight": ["1e3", "1e4", "1e6"],
    }),
    "gallery": ("gallery", "gallery_offline", "study-gallery-offline", {
        "pair": ["astronaut_hubble", "chelsea_immuno", "coffee_hubble", "rocket_immuno"],
    }),
}  # fmt: skip
WRITE_UP_PAIRS = ["berkeley_starry", "berkeley_scream", "berkeley_sunrise", "berkeley_cubism",
                  "bridge_scream", "bridge2_haystacks", "berkeley_inkwash"]  # fmt: skip


def compose_with(*overrides: str, hydra: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def grid(preset: str) -> dict[str, list[str]]:
    params = compose_with(f"experiment={preset}", hydra=True).hydra.sweeper.params
    return {key: str(value).split(",") for key, value in params.items()}


@pytest.mark.parametrize("study", STUDIES)
def test_each_study_has_a_readme_that_says_how_to_run_it_and_what_it_found(study: str) -> None:
    preset, offline, target, _ = STUDIES[study]
    readme = (EXPERIMENTS / study / "README.md").read_text()
    for heading in ("**Question.**", "## Run it", "## What to look at", "## Findings"):
        assert heading in readme, heading
    assert f"experiment={offline}" in readme and f"make {target}" in readme
    assert preset in readme
    findings = readme.split("## Findings", 1)[1]
    assert "Not run with pretrained weights yet" in findings or "model.weights=imagenet" in findings


@pytest.mark.parametrize("study", STUDIES)
def test_presets_are_global_and_sweep_the_studys_grid(study: str) -> None:
    preset, offline, _, offline_grid = STUDIES[study]
    for name in (preset, offline):
        assert (
            (ROOT / "conf/experiment" / f"{name}.yaml")
            .read_text()
            .startswith("# @package _global_\n")
        )
    assert grid(offline) == offline_grid
    cfg = compose_with(f"experiment={offline}")
    for pair in offline_grid["pair"]:  # offline: nothing to download but the weights
        job = compose_with(f"experiment={offline}", f"pair={pair}")
        assert job.pair.content.startswith("skimage:") and job.pair.style.startswith("skimage:")
    assert cfg.layers.name == "approach2" and study in cfg.logger.tags
    write_up = grid(preset)
    assert set(write_up["pair"]) <= set(WRITE_UP_PAIRS)
    assert {key: value for key, value in write_up.items() if key != "pair"} == {
        key: value for key, value in offline_grid.items() if key != "pair"
    }


def test_the_gallery_has_the_seven_pairs_at_the_write_ups_settings() -> None:
    assert grid("gallery") == {"pair": WRITE_UP_PAIRS}
    cfg = compose_with("experiment=gallery")
    assert cfg.style_weight == 1e6 and cfg.layers.name == "approach2"
    assert OmegaConf.missing_keys(cfg) <= {"pair.content", "pair.style"}


def agent_args(sweep: dict, params: dict) -> list[str]:
    """The overrides `wandb agent` passes for `params` (its ${args_no_hyphens} expansion)."""
    variables = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    variables.update(interpreter=[sys.executable], env=["/usr/bin/env"], program=[sweep["program"]])
    command = []
    for chunk in map(str, create_sweep_command(list(sweep["command"]))):
        is_variable = chunk.startswith("${") and chunk.endswith("}")
        command += (variables.get(chunk[2:-1]) or []) if is_variable else [chunk]
    assert command[:4] == ["/usr/bin/env", sys.executable, "-m", "stylelab.run"]
    return command[4:]


@pytest.mark.parametrize("study", STUDIES)
def test_wandb_sweep_files_run_the_offline_grid(study: str) -> None:
    _, offline, _, offline_grid = STUDIES[study]
    sweep = yaml.safe_load((EXPERIMENTS / study / "sweep.yaml").read_text())
    assert sweep["method"] == "grid" and (ROOT / sweep["program"]).is_file()
    assert sweep["parameters"]["experiment"] == {"value": offline}
    swept = {key: spec["values"] for key, spec in sweep["parameters"].items() if "values" in spec}
    assert {key: [float(v) if key == "style_weight" else v for v in values] for key, values in swept.items()} == {
        key: [float(v) if key == "style_weight" else v for v in values] for key, values in offline_grid.items()
    }  # fmt: skip
    for values in itertools.product(*swept.values()):
        args = agent_args(sweep, {"experiment": offline, **dict(zip(swept, values, strict=True))})
        cfg = compose_with(*args)  # what each agent run composes
        assert cfg.pair.content.startswith("skimage:")


def make_with_studies(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`make` with a Makefile that defines BIN like the main one and includes studies.mk."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    makefile = tmp_path / "Makefile"
    makefile.write_text(
        f"BIN := {Path(sys.executable).parent}\ninclude {EXPERIMENTS / 'studies.mk'}\n"
    )
    return subprocess.run(
        ["make", "-f", str(makefile), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("study", STUDIES)
def test_make_targets_run_the_offline_study_then_its_report(study: str, tmp_path: Path) -> None:
    _, offline, target, _ = STUDIES[study]
    result = make_with_studies(tmp_path, "-n", target, "STUDY_ARGS=steps=20 image_size=128")
    assert result.returncode == 0, result.stderr
    run, report = result.stdout.split("; status=$?; ")
    assert f"-m stylelab.run -m experiment={offline} hydra.sweep.dir=multirun/{offline}/" in run
    assert run.endswith("steps=20 image_size=128")
    assert (
        f"-m stylelab.report multirun/{offline}/" in report
        and f"--out reports/{offline}-" in report
    )


@pytest.mark.parametrize(
    ("target", "key"), [("study-layers", "layers"), ("study-style-weight", "style_weight")]
)
def test_the_two_studies_colour_their_report_by_the_studied_key(
    target: str, key: str, tmp_path: Path
) -> None:
    result = make_with_studies(tmp_path, "-n", target)
    assert result.returncode == 0, result.stderr
    report_command = result.stdout.split("; status=$?; ")[1]
    assert f"--color-by {key} --label-by pair" in report_command
    jobs = [
        Job(str(i), overrides={"pair": pair, key: value})
        for i, (pair, value) in enumerate([("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")])
    ]
    keys = [k for k in choose_axes(jobs, None, None)[:2] if k]
    assert plot_keys(jobs, keys) == (key, "pair")  # the same without the options


@pytest.mark.slow
def test_a_study_target_runs_end_to_end(tmp_path: Path) -> None:
    quick = "model.weights=random steps=2 image_size=32 logger=none pair=astronaut_hubble"
    result = make_with_studies(tmp_path, "study-gallery-offline", f"STUDY_ARGS={quick}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (page,) = (tmp_path / "reports").glob("gallery_offline-*.html")
    assert "1 runs, 1 finished" in page.read_text()


GALLERY_PICTURES = ("BERKELEY", "BRIDGE", "BRIDGE2", "PICASSO", "INKWASH")


def run_gallery(tmp_path: Path, **pictures: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in GALLERY_PICTURES}
    env.update(PYTHON="echo", SWEEP=str(tmp_path / "g"), **pictures)
    script = EXPERIMENTS / "gallery" / "run.sh"
    return subprocess.run(
        ["bash", str(script), "image_size=64"], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_gallery_script_runs_a_multirun_per_photo_into_one_folder(tmp_path: Path) -> None:
    result = run_gallery(tmp_path, BERKELEY="/photos/my berkeley.jpg", BRIDGE2="/p/b2.jpg")
    assert result.returncode == 0, result.stderr
    runs = result.stdout.splitlines()
    sweep = f"hydra.sweep.dir={tmp_path / 'g'} hydra.sweep.subdir=${{pair.name}} image_size=64"
    assert runs == [
        f"-m stylelab.run -m experiment=gallery pair=berkeley_starry,berkeley_scream,berkeley_sunrise "
        f"pair.content='/photos/my berkeley.jpg' {sweep}",
        f"-m stylelab.run -m experiment=gallery pair=bridge2_haystacks pair.content='/p/b2.jpg' {sweep}",
        f"-m stylelab.report {tmp_path / 'g'} --title The write-up's gallery",
    ]
    assert "skipping berkeley_cubism: set PICASSO" in result.stderr
    assert "skipping bridge_scream: set BRIDGE" in result.stderr
    nothing = run_gallery(tmp_path)
    assert nothing.returncode == 2 and "set at least BERKELEY" in nothing.stderr
