"""Sweeps on a real SLURM cluster: the single-node one that scripts/slurm/cluster.sh runs.

A session fixture starts the cluster (as root; apt installs SLURM if it is missing) and stops it
at the end if it started it. Without root, or when the cluster cannot start, these tests skip,
unless the CI environment variable is set: then they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from stylelab.slurm import slurm_job_state
from tests.cli_fork import ForkedProcess
from tests.conftest import (
    ROOT,
    leet_records,
    records_of,
    run_cli,
    start_stylelab,
    wandb_records,
    wandb_summary,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

CLUSTER = ROOT / "scripts" / "slurm" / "cluster.sh"
JOB_NAME = f"stylelab-test-{os.getpid()}"  # `scancel --name` finds what these tests left
SLURM = (
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    f"hydra.launcher.name={JOB_NAME}",
)
TINY = ("model.weights=random", "image_size=32")
SWEEP = (*TINY, "steps=3", "style_weight=1e3,1e6", "layers=approach1,approach2")
# Slow enough (L-BFGS at style_weight=1e6: ~0.2 s a step) for signals to land mid-run.
LONG = (*TINY, "style_weight=1e6", "log.flush_every=1", "log.image_every=1000")


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when CI is set (CI must run these tests)."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the SLURM tests must run, but {reason}", pytrace=False)
    pytest.skip(reason)


def cluster(command: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER), command], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """The local SLURM cluster, up; stopped afterwards if this fixture started it."""
    if os.geteuid() != 0:
        unavailable("the local SLURM cluster (scripts/slurm/cluster.sh) needs root")
    if not (shutil.which("sbatch") or shutil.which("apt-get")):
        unavailable("SLURM is not installed and there is no apt-get to install it")
    was_up = cluster("status", timeout=60).returncode == 0
    try:
        started = cluster("start", timeout=900)
    except subprocess.TimeoutExpired:
        cluster("stop", timeout=120)
        unavailable("scripts/slurm/cluster.sh start did not finish within 900 s")
    if started.returncode != 0:
        cluster("stop", timeout=120)
        unavailable(f"scripts/slurm/cluster.sh start failed:\n{started.stderr[-3000:]}")
    # SLURM_CONF for the case where /etc/slurm/slurm.conf is somebody else's real file.
    conf = cluster("env", timeout=60).stdout.strip().removeprefix("export SLURM_CONF=")
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield
    finally:
        subprocess.run(["scancel", f"--name={JOB_NAME}"], capture_output=True, timeout=60)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        if not was_up:
            stopped = cluster("stop", timeout=180)
            assert stopped.returncode == 0, f"cluster.sh stop failed:\n{stopped.stderr}"


def slurm_state() -> str:
    """squeue and sacct for this session's jobs, for failure messages."""
    out = []
    for command in (
        ["squeue", f"--name={JOB_NAME}", "-o", "%i %T %r %M"],
        ["sacct", "-D", "-X", f"--name={JOB_NAME}", "-o", "JobID,State,ExitCode,Elapsed"],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        out.append(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
    return "\n".join(out)


def submitit_logs(sweep_dir: Path) -> str:
    return "\n".join(
        f"--- {log}\n{log.read_text()[-2000:]}"
        for log in sorted(sweep_dir.glob(".submitit/*/*.err"))
    )


def start_sweep(
    cwd: Path, *overrides: str, env: dict | None = None
) -> subprocess.Popen | ForkedProcess:
    """`python -m stylelab.run -m` through SLURM, in the background, forked from the suite's
    fork server (tests/cli_fork.py; `env`: more variables, which sbatch passes on to the jobs;
    the jobs themselves start as SLURM starts them)."""
    more = env or {}
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    env.update(more)
    env.pop("WANDB_API_KEY", None)
    return start_stylelab(["-m", *SLURM, *overrides], cwd, env)


def finish(process: subprocess.Popen | ForkedProcess, sweep_dir: Path, timeout: float) -> str:
    """Wait for the sweep's end; returns its stderr (fails with the cluster's view on timeout)."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(
            f"the sweep did not end within {timeout:.0f} s\n{slurm_state()}\n"
            f"{submitit_logs(sweep_dir)}\n--- sweep stderr\n{stderr[-3000:]}"
        )
    return stderr


def wait_for(what: str, condition: Callable[[], bool], timeout: float, sweep_dir: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(
                f"waited {timeout:.0f} s for {what}\n{slurm_state()}\n{submitit_logs(sweep_dir)}"
            )
        time.sleep(0.1)


def loss_steps(job_dir: Path) -> list[int]:
    path = job_dir / "losses.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def job_id(sweep_dir: Path, num: int | None = None) -> str:
    """The SLURM id of job `num` of an array, or of the sweep's only job."""
    ids = sorted(p.parent.name for p in sweep_dir.glob(".submitit/*/*_submitted.pkl"))
    if num is None:
        assert len(ids) == 1, ids
        return ids[0]
    (found,) = [i for i in ids if i.endswith(f"_{num}")]
    return found


def preempt(job: str, signum: signal.Signals, sweep_dir: Path, sent: bool = False) -> None:
    """Send `signum` to the job's step (unless `sent`); once submitit requeued it, start it
    at once."""
    if not sent:
        subprocess.run(["scancel", f"--signal={signum.name[3:]}", job], check=True, timeout=60)
    wait_for(f"job {job} to be requeued", lambda: slurm_job_state(job) == "PENDING", 60, sweep_dir)
    # A requeued job waits ~120 s (BeginTime) unless told otherwise.
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=60)


def accounting(job: str) -> list[str]:
    """sacct's state of every attempt of the job (-D: requeued ones too)."""
    out = subprocess.run(
        ["sacct", "-D", "-X", "-n", "-j", job, "-o", "State"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.split()


def session_records(job_dir: Path) -> list[list[dict]]:
    """The records of each W&B session (offline-run-* folder) of the job, in order."""
    return [leet_records(run) for run in sorted((job_dir / "wandb").glob("offline-run-*"))]


def test_four_job_sweep_matches_the_local_launcher(slurm_cluster, tmp_path: Path) -> None:
    slurm = start_sweep(tmp_path, *SWEEP, "hydra.sweep.dir=multirun/slurm")
    stderr = finish(slurm, tmp_path / "multirun" / "slurm", timeout=240)
    assert slurm.returncode == 0, f"{stderr[-3000:]}\n{slurm_state()}"
    assert "multirun finished: 4 of 4 jobs succeeded" in stderr
    local = run_cli(
        "hydra/launcher=local",
        *SWEEP,
        "hydra.sweep.dir=multirun/local",
        cwd=tmp_path,
        multirun=True,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    runs: dict[str, dict[str, dict]] = {}
    for launcher in ("slurm", "local"):
        sweep_dir = tmp_path / "multirun" / launcher
        jobs = sorted(p.parent for p in sweep_dir.glob("*/summary.json"))
        assert [job.name for job in jobs] == ["0", "1", "2", "3"]
        for job in jobs:
            (run,) = records_of(wandb_records(job), "run")
            runs.setdefault(launcher, {})[job.name] = run
            assert wandb_summary(job)["exit_code"] == 0
        assert len({run["run_group"] for run in runs[launcher].values()}) == 1, launcher
    for num in ("0", "1", "2", "3"):
        on_slurm, on_local = tmp_path / "multirun/slurm" / num, tmp_path / "multirun/local" / num
        files = {p.relative_to(on_slurm) for p in on_slurm.rglob("*") if "wandb" not in p.parts}
        assert files == {
            p.relative_to(on_local) for p in on_local.rglob("*") if "wandb" not in p.parts
        }
        assert (on_slurm / "config.yaml").read_text() == (on_local / "config.yaml").read_text()
        slurm_summary = json.loads((on_slurm / "summary.json").read_text())
        local_summary = json.loads((on_local / "summary.json").read_text())
        assert slurm_summary["status"] == local_summary["status"] == "finished"
        assert slurm_summary["final/total"] == pytest.approx(local_summary["final/total"], rel=1e-4)
        assert loss_steps(on_slurm) == loss_steps(on_local) == [0, 1, 2]
        assert runs["slurm"][num]["display_name"] == runs["local"][num]["display_name"]


def test_preempted_job_is_requeued_and_resumes_the_same_wandb_run(
    slurm_cluster, tmp_path: Path
) -> None:
    sweep_dir, total = tmp_path / "multirun" / "preempt", 60
    process = start_sweep(tmp_path, *LONG, f"steps={total}", f"hydra.sweep.dir={sweep_dir}")
    job_dir = sweep_dir / "0"
    try:
        wait_for("the job to log 3 steps", lambda: len(loss_steps(job_dir)) >= 3, 180, sweep_dir)
        job = job_id(sweep_dir)
        stops = []
        # SIGTERM (scancel, preemption), then USR2 (SLURM's warning before the time limit).
        for attempt, signum in enumerate((signal.SIGTERM, signal.SIGUSR2), start=2):
            preempt(job, signum, sweep_dir)
            summary = json.loads((job_dir / "summary.json").read_text())
            assert summary["status"] == "interrupted", summary
            stop = int(re.search(r"at step (\d+)", summary["error"])[1])
            assert stop < total, "the run ended before the signal: make it longer"
            stops.append(stop)

            def resumed(attempt: int = attempt, stop: int = stop) -> bool:
                sessions = list((job_dir / "wandb").glob("offline-run-*"))
                return len(sessions) >= attempt and len(loss_steps(job_dir)) >= stop + 3

            wait_for("the requeued job to resume and log 3 steps", resumed, 180, sweep_dir)
        stderr = finish(process, sweep_dir, timeout=180)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "multirun finished: 1 of 1 jobs succeeded" in stderr
    assert loss_steps(job_dir) == list(range(total))
    wait_for(
        "SLURM to record the job as completed",
        lambda: accounting(job) == ["REQUEUED", "REQUEUED", "COMPLETED"],
        30,
        sweep_dir,
    )
    # One W&B run in three sessions: each attempt finished its session, the history is seamless.
    sessions = session_records(job_dir)
    assert len(sessions) == 3
    assert len({records_of(s, "run")[0]["run_id"] for s in sessions}) == 1
    assert [records_of(s, "exit")[0].get("exit_code", 0) for s in sessions] == [143, 140, 0]
    steps = [
        [h["item"]["step"] for h in records_of(s, "history") if "loss/total" in h["item"]]
        for s in sessions
    ]
    assert [session[0] for session in steps] == [0, *stops]
    assert [step for session in steps for step in session] == list(range(total))


def test_packed_task_is_preempted_once_and_each_of_its_jobs_resumes(
    slurm_cluster, tmp_path: Path
) -> None:
    """`jobs_per_task=3`: three jobs in one array task, one batch; SIGTERM checkpoints all
    three, the task is requeued once and each job resumes its own run."""
    sweep_dir, total, nums = tmp_path / "multirun" / "packed", 12, ("0", "1", "2")
    process = start_sweep(
        tmp_path,
        *TINY,
        "log.flush_every=1",
        "log.image_every=1000",
        "style_weight=1e4,3e4,1e5",
        f"steps={total}",
        "hydra.launcher.jobs_per_task=3",
        f"hydra.sweep.dir={sweep_dir}",
    )
    try:
        wait_for(
            "each job to log 2 steps",
            lambda: all(len(loss_steps(sweep_dir / num)) >= 2 for num in nums),
            180,
            sweep_dir,
        )
        job = job_id(sweep_dir)  # the only array task
        preempt(job, signal.SIGTERM, sweep_dir)
        summaries = [json.loads((sweep_dir / num / "summary.json").read_text()) for num in nums]
        assert [summary["status"] for summary in summaries] == ["interrupted"] * 3, summaries
        stops = {int(re.search(r"at step (\d+)", summary["error"])[1]) for summary in summaries}
        assert len(stops) == 1 and min(stops) < total, f"one batch stops at one step: {stops}"
        stderr = finish(process, sweep_dir, timeout=180)
    finally:
        process.kill()
    assert process.returncode == 0, f"{stderr[-3000:]}\n{submitit_logs(sweep_dir)}"
    assert "multirun finished: 3 of 3 jobs succeeded" in stderr
    logs = "\n".join(log.read_text() for log in sweep_dir.glob(".submitit/*/*.err"))
    assert logs.count(f"array task {job} runs jobs #0, #1, #2 (all to run)") == 2, logs
    assert logs.count("batch of 3: jobs #0, #1, #2") == 2, logs
    wait_for(
        "SLURM to record the task as requeued once, then completed",
        lambda: accounting(job) == ["REQUEUED", "COMPLETED"],
        30,
        sweep_dir,
    )
    run_ids = set()
    for num in nums:
        job_dir = sweep_dir / num
        assert loss_steps(job_dir) == list(range(total)), num
        assert json.loads((job_dir / "summary.json").read_text())["status"] == "finished"
        sessions = session_records(job_dir)
        assert len(sessions) == 2, num
        (run_id,) = {records_of(session, "run")[0]["run_id"] for session in sessions}
        run_ids.add(run_id)
        assert [records_of(s, "exit")[0].get("exit_code", 0) for s in sessions] == [143, 0]
        logged = [
            h["item"]["step"]
            for session in sessions
            for h in records_of(session, "history")
            if "loss/total" in h["item"]
        ]
        assert logged == list(range(total)), num
    assert len(run_ids) == 3, "each job has its own W&B run"


def test_cancelled_and_killed_jobs_are_named_and_the_sweep_ends(
    slurm_cluster, tmp_path: Path
) -> None:
    """Job 1 is cancelled (`scancel --signal=KILL <id>`: SIGTERM, SIGKILL after KillWait), job 2
    is killed outright (SIGKILL to its step, as the out-of-memory killer would)."""
    sweep_dir = tmp_path / "multirun" / "kill"
    process = start_sweep(tmp_path, *LONG, "steps=3,5000,5001", f"hydra.sweep.dir={sweep_dir}")
    try:
        for num, target in ((1, "{job}"), (2, "{job}.0")):
            wait_for(
                f"job {num} to log a step",
                lambda num=num: len(loss_steps(sweep_dir / str(num))) >= 1,
                180,
                sweep_dir,
            )
            job = job_id(sweep_dir, num)
            subprocess.run(
                ["scancel", "--signal=KILL", target.format(job=job)], check=True, timeout=60
            )
        killed = time.monotonic()
        stderr = finish(process, sweep_dir, timeout=120)
    finally:
        process.kill()
    print(f"the sweep ended {time.monotonic() - killed:.0f} s after the last kill")
    assert process.returncode == 1, stderr[-3000:]
    assert "multirun finished: 1 of 3 jobs succeeded" in stderr
    assert "REQUEUED" not in accounting(job_id(sweep_dir, 1)), "a cancelled job was requeued"
    assert re.search(
        r"job 1: interrupted \(interrupted by SIGTERM at step \d+\)( \[[^]]*\])?; continue with",
        stderr,
    ), stderr
    assert json.loads((sweep_dir / "1" / "summary.json").read_text())["status"] == "interrupted"
    died = re.search(rf"job #2 \(SLURM job {job_id(sweep_dir, 2)}\) died: state (\w+)", stderr)
    assert died and died[1] == "FAILED", stderr[-3000:]
    assert f"job folder {sweep_dir / '2'}" in stderr
    assert re.search(r"job 2: killed: no summary\.json", stderr), stderr[-3000:]
    assert not (sweep_dir / "2" / "summary.json").exists()
    assert json.loads((sweep_dir / "0" / "summary.json").read_text())["status"] == "finished"
