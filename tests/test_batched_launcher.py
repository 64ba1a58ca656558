"""`hydra/launcher=batched` through the CLI: batched jobs are still jobs, and fail alone."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from hydra_plugins.stylelab_launchers.launcher_options import checked_batch_size, checked_devices
from tests.conftest import records_of, run_cli, start_cli, wandb_records
from tests.test_fault_runs import wait_for_rows

pytestmark = pytest.mark.slow
FAST = ["model.weights=random", "image_size=32", "steps=4", "log.image_every=2"]
FAST += ["batch_invariant=true", "precision=fp32"]
SWEEP = ["style_weight=1e3,1e6", "layers=approach1,approach2"]
JOB_FILES = {"final.png", "losses.jsonl", "config.yaml", "summary.json", "synthesis.gif"}
JOB_FILES |= {"checkpoint.pt", "frames", "content.png", "style.png", ".hydra", "run.log"}


def read_rows(job: Path) -> list[dict]:
    return [json.loads(line) for line in (job / "losses.jsonl").read_text().splitlines()]


def jobs_of(sweep: Path) -> dict[str, Path]:
    """Job folders by their swept values (`style_weight=1000.0 layers=approach1`)."""
    return {
        " ".join(o for o in _overrides(job) if o.startswith(("style_weight=", "layers="))): job
        for job in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    }


def _overrides(job: Path) -> list[str]:
    lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
    return [line.removeprefix("- ") for line in lines if line.startswith("- ")]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> tuple[Path, Path, str]:
    """The same sweep through the sequential launcher and, with two bad jobs more, batched on two
    CPU workers (W&B offline); returns both sweep folders and the batched run's log."""
    cwd = tmp_path_factory.mktemp("batched")
    alone = run_cli(*FAST, "logger=none", *SWEEP, "hydra.sweep.dir=seq", cwd=cwd, multirun=True)
    assert alone.returncode == 0, alone.stderr
    batched = run_cli(
        *FAST, "hydra/launcher=batched", "hydra.launcher.devices=[cpu,cpu]",
        "style_weight=1e3,1e6,-1,1e39", "layers=approach1,approach2", "hydra.sweep.dir=bat",
        cwd=cwd, multirun=True,
    )  # fmt: skip
    assert batched.returncode == 1, batched.stderr  # the bad jobs fail; the sweep says so
    return cwd / "seq", cwd / "bat", batched.stderr


def test_each_batched_job_takes_the_steps_it_takes_alone(sweeps) -> None:
    sequential, batched, _ = sweeps
    alone, together = jobs_of(sequential), jobs_of(batched)
    assert len(alone) == 4 and set(alone) <= set(together)
    for name, job in alone.items():
        want, got = read_rows(job), read_rows(together[name])
        assert [r["step"] for r in got] == list(range(4))
        for a, b in zip(got, want, strict=True):
            for key, value in b.items():  # terms far below the total: to 1e-5 of the total
                tolerance = pytest.approx(value, rel=1e-5, abs=1e-5 * b["total"])
                assert a[key] == tolerance, (name, key)
        summary = json.loads((together[name] / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert summary["final/total"] == pytest.approx(min(r["total"] for r in want), rel=1e-5)


def test_each_batched_job_is_evaluated_as_alone(sweeps) -> None:
    """The evaluation protocol reads each job's own final.png, one image at a time: a job's
    eval/* are those of the same job run alone, bit for bit where the images are equal."""
    sequential, batched, _ = sweeps
    alone, together = jobs_of(sequential), jobs_of(batched)
    for name, job in alone.items():
        want = json.loads((job / "summary.json").read_text())
        got = json.loads((together[name] / "summary.json").read_text())
        assert (job / "final.png").read_bytes() == (together[name] / "final.png").read_bytes()
        evals = [key for key in want if key.startswith("eval/")]
        assert len(evals) == 5 and "eval/error" not in evals, want
        assert {key: got.get(key) for key in evals} == {key: want[key] for key in evals}, name


def test_batched_jobs_keep_their_files_and_their_own_wandb_runs(sweeps) -> None:
    _, batched, log = sweeps
    finished = [job for job in jobs_of(batched).values() if _status(job) == "finished"]
    assert len(finished) == 4
    runs = []
    for job in finished:
        assert {p.name for p in job.iterdir()} >= JOB_FILES, job
        (run,) = records_of(wandb_records(job), "run")
        runs.append(run)
    assert len({run["run_id"] for run in runs}) == 4
    assert len({run["run_group"] for run in runs}) == 1
    # Dealt to the two workers in turn (the refused jobs never reach a batch): two batches.
    assert "batch of 3: jobs #0, #2, #6" in log and "batch of 3: jobs #1, #3, #7" in log, log


def test_batched_jobs_log_their_own_result_artifact(sweeps) -> None:
    _, batched, _ = sweeps
    finished = [job for job in jobs_of(batched).values() if _status(job) == "finished"]
    assert len(finished) == 4
    for job in finished:
        records = wandb_records(job)
        (run,) = records_of(records, "run")
        results = [a for a in records_of(records, "artifact") if a["type"] == "result"]
        assert [a["name"] for a in results] == [f"result-{run['run_id']}"]
        assert {"final.png", "summary.json"} <= {
            e["path"] for e in results[0]["manifest"]["contents"]
        }


def _status(job: Path) -> str:
    return json.loads((job / "summary.json").read_text())["status"]


def test_a_bad_job_fails_alone_with_its_one_line(sweeps) -> None:
    _, batched, log = sweeps
    refused = [batched / "4", batched / "5"]  # style_weight=-1
    diverged = [batched / "6", batched / "7"]  # style_weight=1e39
    assert all(_status(job) == "failed" for job in refused + diverged)
    assert "job 4: failed: style_weight=-1.0: must be >= 0 and finite" in log
    assert "the loss became inf at step 0" in log
    assert "4 of 8 jobs succeeded" in log and "Traceback" not in log


def test_a_signal_checkpoints_every_job_and_a_rerun_continues_each(tmp_path: Path) -> None:
    sweep = ["model.weights=random", "image_size=32", "log.flush_every=1", "logger=none"]
    sweep += ["hydra/launcher=batched", "optim.lr=0.5,1", "hydra.sweep.dir=multirun/s"]
    process = start_cli("-m", *sweep, "steps=100000", cwd=tmp_path)
    losses = [tmp_path / f"multirun/s/{num}/losses.jsonl" for num in (0, 1)]
    deadline = time.monotonic() + 120
    while not all(p.is_file() and p.read_text().count("\n") >= 2 for p in losses):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "multirun stopped by SIGTERM: 0 of 2 jobs finished" in stderr
    steps = set()
    for num in (0, 1):
        job = tmp_path / f"multirun/s/{num}"
        assert _status(job) == "interrupted"
        steps.add(torch.load(job / "checkpoint.pt", weights_only=True)["synthesis"]["step"])
    (stopped,) = steps  # every job of the batch stopped at the same step
    again = run_cli(*sweep, f"steps={stopped + 3}", cwd=tmp_path, multirun=True)
    assert again.returncode == 0, again.stderr
    for num in (0, 1):
        job = tmp_path / f"multirun/s/{num}"
        assert _status(job) == "finished"
        assert [r["step"] for r in read_rows(job)] == list(range(stopped + 3))


def test_optuna_trials_run_as_batches(tmp_path: Path) -> None:
    result = run_cli(
        "hparams_search=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
        "hydra/launcher=batched", *FAST, "logger=none", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"batch of 2: jobs", result.stderr)) == 2, result.stderr
    (best,) = tmp_path.glob("multirun/*/*/optimization_results.yaml")
    assert "best_value" in best.read_text()


def test_a_single_device_name_is_a_list_of_one(tmp_path: Path) -> None:
    """Issue 26: `devices=cpu` once failed every job with "unknown device 'c'"."""
    result = run_cli(
        *FAST, "logger=none", "steps=2", "style_weight=1e3,1e6", "hydra/launcher=batched",
        "hydra.launcher.devices=cpu", "hydra.sweep.dir=multirun/s", cwd=tmp_path, multirun=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on cpu" in result.stderr
    for job in ("0", "1"):
        summary = json.loads((tmp_path / "multirun/s" / job / "summary.json").read_text())
        assert summary["status"] == "finished"


def test_batch_size_zero_is_one_line(tmp_path: Path) -> None:
    result = run_cli(
        *FAST, "logger=none", "hydra/launcher=batched", "hydra.launcher.batch_size=0",
        cwd=tmp_path, multirun=True,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "[stylelab][ERROR] - hydra.launcher.batch_size=0: use a whole number, 1 or more"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_launcher_devices_say_that_the_key_overrides_device(capsys) -> None:
    with pytest.raises(SystemExit):
        checked_devices(["cuda:0"])
    line = capsys.readouterr().err.strip()
    assert line.startswith("[stylelab][ERROR] - hydra.launcher.devices=['cuda:0']: device 'cuda:0'")
    assert "overrides each job's device=" in line and "use device=cpu" not in line
    with pytest.raises(SystemExit):
        checked_batch_size("4")
    assert checked_devices("cpu") == ["cpu"] and checked_devices(None) == []


def test_after_a_signal_no_queued_batch_starts_and_its_jobs_never_started(tmp_path: Path) -> None:
    """Issue 26 case 8: batches of one, queued behind a long first job; SIGTERM while it runs."""
    sweep = ["model.weights=random", "image_size=32", "log.flush_every=1", "logger=none"]
    sweep += ["hydra/launcher=batched", "hydra.launcher.batch_size=1", "optim.lr=0.5,1,2"]
    sweep += ["hydra.sweep.dir=multirun/s"]
    process = start_cli("-m", *sweep, "steps=100000", cwd=tmp_path)
    wait_for_rows(process, "multirun/s/0/losses.jsonl", tmp_path, rows=2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM: 0 of 3 jobs finished, 1 did not, 2 never started" in stderr
    assert "job 0: interrupted (interrupted by SIGTERM at step" in stderr
    for num in (1, 2):
        job = tmp_path / f"multirun/s/{num}"
        assert f"job {num}: never started (stopped by SIGTERM before its first step)" in stderr
        assert _status(job) == "not started"
        assert not (job / "losses.jsonl").exists() and not (job / "checkpoint.pt").exists()
    stopped = torch.load(tmp_path / "multirun/s/0/checkpoint.pt", weights_only=True)
    steps = stopped["synthesis"]["step"] + 2
    again = run_cli(*sweep, f"steps={steps}", cwd=tmp_path, multirun=True)  # resumes or starts each
    assert again.returncode == 0, again.stderr
    for num in (0, 1, 2):
        job = tmp_path / f"multirun/s/{num}"
        assert _status(job) == "finished"
        assert [r["step"] for r in read_rows(job)] == list(range(steps))
