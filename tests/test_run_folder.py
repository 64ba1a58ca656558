"""One run-folder vocabulary: status words, summaries, losses, checkpoint keys and the
comparison columns, the same for every reader (in-process, no runs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from hydra_plugins.stylelab_launchers.sweep_plan import earlier_jobs
from stylelab import report
from stylelab.callbacks import collect_summaries, job_line
from stylelab.columns import COLUMNS
from stylelab.outputs import RunFolder, RunFolderError
from stylelab.run import swept_values
from stylelab.run_folder import (
    KILLED_ERROR,
    Status,
    checkpoint_extra,
    checkpoint_stage,
    checkpoint_step,
    read_summary,
)
from tests.test_perceptual import config

WORDS = {  # the words summary.json and the end-of-sweep list have always used
    "finished": "finished",
    "failed": "failed",
    "interrupted": "interrupted",
    "killed": "killed",
    "not started": "never started",
}


def job_folder(sweep: Path, name: str, summary: str | None) -> Path:
    """A job folder as Hydra and a run leave it, with `summary` as summary.json's text."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra/overrides.yaml").write_text(yaml.safe_dump([f"a={name}"]))
    (folder / "config.yaml").write_text("steps: 2\n")
    if summary is not None:
        (folder / "summary.json").write_text(summary)
    return folder


@pytest.mark.parametrize("word", list(WORDS))
def test_each_status_word_round_trips_through_summary_json(tmp_path: Path, word: str) -> None:
    assert word in Status.ALL and Status.shown(word) == WORDS[word]
    path = RunFolder(tmp_path).write_summary({"status": word, "error": "e"})
    assert json.loads(path.read_text())["status"] == word  # the bytes users already see
    assert read_summary(tmp_path)["status"] == word
    results = collect_summaries(job_folder(tmp_path, "0", path.read_text()).parent)
    assert results == [(tmp_path / "0", {"status": word, "error": "e"})]
    shown = job_line(tmp_path / "0", results[0][1])[1]
    assert shown.startswith(f"  job 0: {WORDS[word]}"), shown


BROKEN = {
    "missing": None,
    "corrupt": '{"status": "fini',
    "not an object": "[1, 2]",
    "no status": '{"final/total": 1.5}',
}


@pytest.mark.parametrize("summary", BROKEN.values(), ids=list(BROKEN))
def test_a_missing_or_corrupt_summary_reads_as_killed_everywhere(
    tmp_path: Path, summary: str | None
) -> None:
    folder = job_folder(tmp_path, "0", summary)
    (folder / "checkpoint.pt").write_bytes(b"")
    assert read_summary(folder)["status"] == Status.KILLED
    results = collect_summaries(tmp_path)
    assert results[0][1]["status"] == "killed"
    level, line = job_line(folder, results[0][1])
    assert level == logging.ERROR and line.startswith("  job 0: killed: ")
    assert report.load_job(folder).status == "killed"
    assert RunFolder(folder).earlier_run() == "killed"
    with pytest.raises(RunFolderError, match="already holds a killed run"):
        RunFolder(folder).check_fresh()
    (earlier,) = earlier_jobs(tmp_path)  # neither finished nor interrupted: a new job number
    assert not (earlier.finished or earlier.interrupted or earlier.not_started)
    if summary is None:
        assert results[0][1]["error"] == KILLED_ERROR
        assert "summary.json" in report.load_job(folder).error


def test_the_report_shows_a_killed_jobs_last_logged_error(tmp_path: Path) -> None:
    folder = job_folder(tmp_path, "0", None)
    (folder / "run.log").write_text("[t][stylelab][ERROR] - image not found: /x.jpg\n")
    job = report.load_job(folder)
    assert job.status == "killed" and job.error == "image not found: /x.jpg"


def test_a_loss_row_cut_short_by_a_kill_is_left_out(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.append_losses([{"step": 0, "total": 2.0}, {"step": 1, "total": 1.0}])
    with folder.losses_path.open("a") as file:
        file.write('{"step": 2, "to')
    assert folder.read_losses() == [{"step": 0, "total": 2.0}, {"step": 1, "total": 1.0}]
    assert report.load_job(tmp_path).losses == folder.read_losses()
    folder.truncate_losses(before_step=1)  # a resume after the kill
    assert folder.read_losses() == [{"step": 0, "total": 2.0}]


def test_the_checkpoint_keys_read_outside_the_engine(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    state = {"synthesis": {"step": 7, "image": torch.zeros(1)}, "stage": 2}
    folder.save_checkpoint({**state, **checkpoint_extra("abc", "w1", {"steps": 9})})
    loaded = folder.load_checkpoint()
    assert loaded is not None
    assert (checkpoint_step(loaded), checkpoint_stage(loaded)) == (7, 2)
    assert (loaded["run_id"], loaded["tracker_run_id"], loaded["config"]) == (
        "abc",
        "w1",
        {"steps": 9},
    )
    assert checkpoint_stage({"synthesis": {"step": 1}}) == 0  # a run of one stage


def test_both_comparison_views_show_the_same_columns() -> None:
    overrides = ["optim=adam", "model.weights=random"]
    values = swept_values(config(*overrides), overrides)
    assert list(values)[: len(COLUMNS)] == list(COLUMNS)
    assert values["optim"] == "adam" and values["weights"] == "random"
    assert "optimizer" not in values
    job = report.Job("0", {}, {"optim": {"name": "adam"}, "model": {"weights": "random"}})
    head = report.table_model([job], [])["head"]
    assert head[2 : 2 + len(COLUMNS)] == list(COLUMNS)
    assert (job.value("optim"), job.value("weights")) == ("adam", "random")


def test_the_tables_are_rendered_by_the_template_with_autoescaping() -> None:
    job = report.Job("<i>0</i>", {"a": "<b>1</b>"}, {}, {"status": "failed", "error": "<script>"})
    model = report.table_model([job], ["a"])
    assert ("<b>1</b>", "<b>1</b>") in model["rows"][0]["cells"]  # the model holds plain text
    html = report.table_html([job], ["a"]) + report.grid_html([job, report.Job("1")])
    assert "<script>" not in html and "<b>1</b>" not in html and "<i>0</i>" not in html
    assert "&lt;script&gt;" in html and '<td data-sort="&lt;i&gt;0&lt;/i&gt;">' in html
