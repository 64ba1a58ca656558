"""Shared fixtures: tiny offline images, a seeded random VGG, CLI runner helpers; the parallel
run's set-up (one thread per pytest-xdist worker, isolation marks, runs shared by workers)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from tests.cli_fork import STYLELAB_RUN, ForkedProcess, ForkServer
from tests.grouping import pytest_collection_modifyitems  # noqa: F401 (the hook)

ROOT = Path(__file__).resolve().parent.parent
FAST = ["model.weights=random", "image_size=32", "logger=none"]
_FORKS = ForkServer()  # the CLI runs of run_cli and start_cli


def pytest_configure(config: pytest.Config) -> None:
    """In each pytest-xdist worker: one torch (and OpenMP) thread, for it and the CLI runs it
    starts, so that two workers do not fight over two cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = "1"
        torch.set_num_threads(1)
        with contextlib.suppress(RuntimeError):  # refused once torch ran parallel work
            torch.set_num_interop_threads(1)


def pytest_unconfigure(config: pytest.Config) -> None:
    _FORKS.close()


def shared_folder(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]
) -> Path:
    """A folder that `make(folder)` fills once per test run, whichever xdist worker asks first;
    the others wait for it and reuse it. A failed `make` leaves nothing for the next one."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No network, W&B offline, caches in temporary folders."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("STYLELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    # Offline artifacts are staged here until `wandb sync`: keep them out of the home folder.
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path_factory.getbasetemp() / "wandb-data"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def run_cli(
    *overrides: str,
    cwd: Path,
    multirun: bool = False,
    env: dict | None = None,
    timeout: float = 300,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """`python -m stylelab.run [-m] overrides...` in `cwd`; returns the finished process. It is
    forked from a process that has imported stylelab (tests/cli_fork.py) unless `fresh` (a new
    interpreter, for tests of what starting one does) or STYLELAB_TEST_FORK=0."""
    args = [*(["-m"] if multirun else []), *overrides]
    return run_python([*STYLELAB_RUN, *args], cwd, cli_env(env), timeout, fresh)


def run_python(
    argv: list[str], cwd: Path, env: dict, timeout: float | None = 300, fresh: bool = False
) -> subprocess.CompletedProcess:
    """`python argv...` (`-m module args...` or `-c code args...`) in `cwd` with exactly `env`,
    finished (text, stdout and stderr captured): forked as `run_cli`'s runs are, unless `fresh`,
    STYLELAB_TEST_FORK=0 or an `env` the fork server does not serve."""
    if forking(env, fresh):
        return _FORKS.run_python(argv, cwd=cwd, env=env, timeout=timeout)
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def start_cli(*args: str, cwd: Path, fresh: bool = False) -> subprocess.Popen | ForkedProcess:
    """`python -m stylelab.run args...` in `cwd`, still running (stdout and stderr piped)."""
    return start_stylelab(list(args), cwd, cli_env(), fresh=fresh)


def start_stylelab(
    args: list[str], cwd: Path, env: dict, fresh: bool = False, stderr_to_stdout: bool = False
) -> subprocess.Popen | ForkedProcess:
    """`python -m stylelab.run args...` in `cwd` with exactly `env`, still running: a child of
    the fork server unless `fresh`, STYLELAB_TEST_FORK=0 or an `env` it does not serve, else a
    new interpreter (text, stdout piped, stderr piped or merged into stdout)."""
    argv = [*STYLELAB_RUN, *args]
    if forking(env, fresh):
        return _FORKS.start_python(argv, cwd=cwd, env=env, stderr_to_stdout=stderr_to_stdout)
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr_to_stdout else subprocess.PIPE,
        text=True,
    )


def forking(env: dict, fresh: bool) -> bool:
    """Whether a CLI run with `env` is forked (tests/cli_fork.py) rather than a new interpreter."""
    return not fresh and os.environ.get("STYLELAB_TEST_FORK") != "0" and _FORKS.serves(env)


def cli_env(extra: dict | None = None) -> dict:
    """The environment CLI runs get: W&B offline and silent, no API key, unbuffered output."""
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONUNBUFFERED": "1",
        "HYDRA_FULL_ERROR": "0",
        **(extra or {}),
    }
    env.pop("WANDB_API_KEY", None)
    return env


def only_run_dir(root: Path) -> Path:
    """The one Hydra run folder under `root/outputs`."""
    dirs = [p.parent for p in root.glob("outputs/*/*/config.yaml")]
    assert len(dirs) == 1, dirs
    return dirs[0]


HOST_READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu")


@contextlib.contextmanager
def no_host_reads(what: str = "the step") -> Iterator[None]:
    """Every read of a tensor's value by the host raises inside this block: `Tensor.item`,
    `bool()`, `float()`, `int()`, indexing with a tensor, `tolist`, `numpy`, `.cpu()` and
    `.to("cpu")`. A CUDA graph cannot capture such a read, and on CPU it would pass unnoticed."""
    to = torch.Tensor.to

    def forbidden(name: str):
        def read(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} called inside {what}: a host read")

        return read

    def to_device(self, *args, **kwargs):
        targets = [*args, kwargs.get("device")]
        if any(
            isinstance(t, str | torch.device) and torch.device(t).type == "cpu" for t in targets
        ):
            raise AssertionError(f'Tensor.to("cpu") called inside {what}: a host read')
        return to(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, forbidden(name))
        patch.setattr(torch.Tensor, "to", to_device)
        yield


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine extra threads made
    such tests up to 6x slower; restored afterwards (`pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 32, 32, generator=generator), torch.rand(
        1, 3, 32, 32, generator=generator
    )


def leet_inspect(run: Path, *flags: str) -> str:
    """What `wandb leet inspect [flags] run` prints: W&B's own command (its click entry point,
    `wandb.cli.cli.cli`) run in this process, which saves the ~1 s of CPU a `wandb` process
    spends importing itself; wandb-core still reads the run, as in the shell. A failure raises
    with what it wrote to stderr. tests/test_wandb_runs.py checks it prints what the shell's
    `wandb` prints."""
    from wandb.cli.cli import cli

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)  # wandb-core inherits these
        os.dup2(err.fileno(), 2)
        try:
            cli.main(["leet", "inspect", *flags, str(run)], "wandb", standalone_mode=False)
            code = 0
        except SystemExit as exit:  # the command ends with wandb-core's exit code
            code = exit.code
        finally:
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
        out.seek(0)
        err.seek(0)
        assert code in (0, None), f"wandb leet inspect {run} failed: {err.read().decode()}"
        return out.read().decode()


def leet_records(run: Path) -> list[dict]:
    """Every record of one W&B run folder (offline-run-*), read by `wandb leet inspect --json`."""
    out = leet_inspect(run, "--json")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def only_wandb_run(job_dir: Path) -> Path:
    """The one W&B run folder (offline-run-*) under `job_dir/wandb`."""
    runs = sorted((job_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one W&B run under {job_dir}, found {runs}"
    return runs[0]


def wandb_records(job_dir: Path) -> list[dict]:
    """Every record of the one W&B run under `job_dir/wandb`, read by W&B's own reader."""
    return leet_records(only_wandb_run(job_dir))


def records_of(records: list[dict], kind: str) -> list[dict]:
    return [record[kind] for record in records if record["type"] == kind]


def wandb_summary(job_dir: Path) -> dict:
    """`wandb leet inspect --summary --json` of the one W&B run under `job_dir/wandb`."""
    return json.loads(leet_inspect(only_wandb_run(job_dir), "--summary", "--json"))
