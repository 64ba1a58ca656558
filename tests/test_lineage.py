"""W&B lineage, read back from offline `.wandb` records: result and checkpoint artifacts, input
digests, and resume from a W&B run's checkpoint artifact (laid out as the download gives it)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylelab import runner
from stylelab.config import validate
from stylelab.engine.sources import SKIMAGE_PHOTOS, source_file
from stylelab.errors import StyleLabError
from stylelab.lineage import input_files
from stylelab.outputs import RunFolder
from stylelab.signals import Interrupted
from stylelab.tracking import BackgroundTracker, RunInfo, Tracker, make_tracker
from stylelab.tracking.wandb_tracker import WandbTracker
from tests.conftest import cli_env, only_run_dir, records_of, run_cli, run_python, wandb_records
from tests.test_robustness import tiny_config

STEPS = 6
RUN = [
    "model.weights=random",
    "image_size=32",
    f"steps={STEPS}",
    "log.flush_every=2",
    "log.checkpoint_every=2",
    "log.image_every=2",
    "logger.mode=offline",
]


@pytest.fixture(autouse=True)
def _staging(monkeypatch, tmp_path_factory) -> None:
    """W&B copies artifact files to its data folder: a temporary one."""
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path_factory.getbasetemp() / "wandb-data"))


@pytest.fixture(scope="module")
def lineage_run(tmp_path_factory) -> tuple[Path, list[dict], str]:
    """One offline run logging every artifact kind, its content a local file."""
    cwd = tmp_path_factory.mktemp("lineage")
    content = cwd / "painting.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(content)
    data = {"WANDB_DATA_DIR": str(tmp_path_factory.getbasetemp() / "wandb-data")}
    result = run_cli(
        *RUN, f"pair.content={content}", "logger.artifacts=[result,checkpoint,inputs]",
        cwd=cwd, env=data,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(cwd)
    return run_dir, wandb_records(run_dir), result.stderr


def artifacts(records: list[dict], kind: str) -> list[dict]:
    return [a for a in records_of(records, "artifact") if a["type"] == kind]


def files_of(artifact: dict) -> dict[str, dict]:
    return {entry["path"]: entry for entry in artifact["manifest"]["contents"]}


def test_the_result_artifact_holds_the_run_files_and_final_metrics(lineage_run) -> None:
    run_dir, records, _ = lineage_run
    (run,) = records_of(records, "run")
    (result,) = artifacts(records, "result")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["name"] == f"result-{run['run_id']}"
    assert set(result["aliases"]) == {"latest", "best"}
    files = files_of(result)
    assert set(files) == {"final.png", "synthesis.gif", "config.yaml", "summary.json",
                          "losses.jsonl"}  # fmt: skip
    for name, entry in files.items():
        assert int(entry["size"]) == (run_dir / name).stat().st_size
    metadata = json.loads(result["metadata"])
    assert metadata["final/total"] == pytest.approx(summary["final/total"])
    assert metadata["steps"] == STEPS and metadata["kept"] == "best"


def test_a_checkpoint_version_at_each_checkpoint(lineage_run) -> None:
    _, records, _ = lineage_run
    (run,) = records_of(records, "run")
    versions = artifacts(records, "checkpoint")
    assert {v["name"] for v in versions} == {f"checkpoint-{run['run_id']}"}
    assert [json.loads(v["metadata"])["step"] for v in versions] == [2, 4, 6]
    for version in versions:
        step = json.loads(version["metadata"])["step"]
        assert f"step-{step}" in version["aliases"]
        assert {"checkpoint.pt", "config.yaml", "losses.jsonl"} <= set(files_of(version))


def test_input_digests_in_the_summary_and_the_wandb_config(lineage_run) -> None:
    run_dir, records, _ = lineage_run
    content = run_dir.parent.parent.parent / "painting.png"
    expected = hashlib.sha256(content.read_bytes()).hexdigest()
    inputs = json.loads((run_dir / "summary.json").read_text())["inputs"]
    assert inputs["content"] == {"source": str(content), "sha256": expected}
    style = source_file("skimage:hubble_deep_field")
    assert inputs["style"]["sha256"] == hashlib.sha256(style.read_bytes()).hexdigest()
    updates = [c["update"] for c in records_of(records, "config") if "inputs" in c["update"]]
    assert updates and updates[-1]["inputs"] == inputs


def test_offline_input_lineage_is_one_notice(lineage_run) -> None:
    _, records, stderr = lineage_run
    assert stderr.count("input lineage needs W&B online") == 1
    assert not artifacts(records, "input")


def test_every_bundled_photo_has_a_file_to_digest() -> None:
    for name in SKIMAGE_PHOTOS:
        assert source_file(f"skimage:{name}").is_file(), name


def test_input_files_name_every_file_and_skip_generated_masks(tmp_path: Path) -> None:
    mask = tmp_path / "mask.png"
    Image.new("L", (8, 8), 255).save(mask)
    cfg = tiny_config(init="image", init_image="skimage:rocket")
    cfg.pair.style = ["skimage:coffee", "skimage:chelsea"]
    cfg.pair.style_masks = ["mask:left", str(mask)]
    files = input_files(cfg)
    assert list(files) == ["content", "style", "style_2", "mask_2", "init"]
    assert files["mask_2"].sha256 == hashlib.sha256(mask.read_bytes()).hexdigest()


def test_an_unknown_artifact_kind_is_refused_in_one_line() -> None:
    cfg = tiny_config()
    cfg.logger.artifacts = ["result", "model"]
    with pytest.raises(StyleLabError, match=r"model is not an artifact kind; use a list of"):
        validate(cfg)


class SignalAtStep2(WandbTracker):
    """Sends the run SIGUSR2 (SLURM's warning) once step 2 is logged."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        super().log_metrics(step, metrics)
        if step == 2:
            os.kill(os.getpid(), signal.SIGUSR2)


def offline_run(
    tmp_path: Path, artifacts: list[str], tracker: Tracker | None = None, **overrides
) -> tuple[list[dict], Exception]:
    """An in-process offline W&B run of `tiny_config`; (its records, what it raised)."""
    tracker = tracker or make_tracker("wandb", mode="offline", artifacts=artifacts)
    raised: Exception | None = None
    try:
        runner.run_synthesis(
            tiny_config(**overrides), tmp_path, tracker, RunInfo({}, tmp_path, "x")
        )
    except Exception as error:
        raised = error
    return wandb_records(tmp_path), raised


def test_an_empty_artifact_list_logs_none(tmp_path: Path) -> None:
    records, raised = offline_run(tmp_path, [], steps=4)
    assert raised is None
    assert not [kind for kind in ("result", "checkpoint", "input") if artifacts(records, kind)]


def test_a_checkpoint_that_failed_to_save_is_no_artifact(tmp_path: Path, monkeypatch) -> None:
    save = RunFolder.save_checkpoint

    def torn_at_step_4(folder: RunFolder, state: dict) -> Path:
        if state["synthesis"]["step"] == 4:  # a full disk midway through the file
            (folder.root / "checkpoint.pt.tmp").write_bytes(b"PK\x03\x04 torn")
            raise OSError(28, "No space left on device")
        return save(folder, state)

    monkeypatch.setattr(RunFolder, "save_checkpoint", torn_at_step_4)
    tiny = tiny_config()
    tiny.log.checkpoint_every = 2
    records, raised = offline_run(tmp_path, ["checkpoint"], steps=6, log=tiny.log)
    assert isinstance(raised, OSError)
    versions = artifacts(records, "checkpoint")
    assert [json.loads(v["metadata"])["step"] for v in versions] == [2]
    assert not artifacts(records, "result")


def test_a_stop_signal_logs_its_checkpoint_and_no_result(tmp_path: Path) -> None:
    tracker = BackgroundTracker(SignalAtStep2(mode="offline", artifacts=["result", "checkpoint"]))
    records, raised = offline_run(tmp_path, [], tracker, steps=12)
    assert isinstance(raised, Interrupted)
    step = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["synthesis"]["step"]
    versions = artifacts(records, "checkpoint")
    assert [json.loads(v["metadata"])["step"] for v in versions] == [step] and 2 < step < 12
    assert not artifacts(records, "result")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and set(summary["inputs"]) == {"content", "style"}


# `resume=wandb:...` with the download replaced by copying a folder laid out as it would be.
RESUME_SCRIPT = """
import shutil, sys
import stylelab.wandb_resume as w
layout = sys.argv.pop(1)
w.download_checkpoint = lambda resume, name, folder, mode: shutil.copytree(
    layout, folder, dirs_exist_ok=True)
from stylelab.run import main
main()
"""


def lay_out(artifact: dict, folder: Path) -> Path:
    """The folder `artifact.download()` gives: each manifest path holding its file."""
    folder.mkdir(parents=True)
    for path, entry in files_of(artifact).items():
        shutil.copy(entry["local_path"], folder / path)
    return folder


def test_resume_from_a_wandb_checkpoint_continues_the_same_run(lineage_run, tmp_path) -> None:
    _, records, _ = lineage_run
    (run,) = records_of(records, "run")
    latest = artifacts(records, "checkpoint")[-1]
    layout = lay_out(latest, tmp_path / "download")
    resume = f"resume=wandb:someone/stylelab/{run['run_id']}"
    command = ["-c", RESUME_SCRIPT, str(layout)]
    env = cli_env({"WANDB_DATA_DIR": str(tmp_path / "wandb-data")})
    refused = run_python([*command, resume, "image_size=64"], tmp_path, env, timeout=None)
    assert refused.returncode == 1 and "a run cannot change image_size" in refused.stderr
    shutil.rmtree(tmp_path / "outputs")
    result = run_python([*command, resume, "steps=8"], tmp_path, env, timeout=None)
    assert result.returncode == 0, result.stderr
    resumed = only_run_dir(tmp_path)
    assert [p.name.split("-")[-1] for p in (resumed / "wandb").glob("offline-run-*")] == [
        run["run_id"]
    ]
    steps = [
        json.loads(line)["step"] for line in (resumed / "losses.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(8))
    assert json.loads((resumed / "summary.json").read_text())["steps"] == 8
    stored = (resumed / "config.yaml").read_text()
    assert "entity: someone" in stored and "project: stylelab" in stored


@pytest.mark.parametrize(
    "resume, message",
    [
        ("wandb:me/stylelab/abc123", "downloading a W&B run needs W&B online, and it is offline"),
        ("wandb:stylelab/abc123", "give the W&B run as wandb:<entity>/<project>/<run id>"),
    ],
)
def test_resume_from_wandb_is_refused_in_one_line(tmp_path: Path, resume: str, message) -> None:
    result = run_cli("model.weights=random", f"resume={resume}", cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
