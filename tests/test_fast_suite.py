"""The test suite's own machinery (issue 29): forked CLI runs, shared folders, isolation marks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest
from tests.cli_fork import ForkServer
from tests.conftest import FAST, ROOT, cli_env, run_cli, shared_folder
from tests.grouping import pytest_collection_modifyitems
from tests.test_fault_runs import wait_for_rows


def error_lines(stderr: str) -> list[str]:
    """The [ERROR] lines without their time stamps."""
    return [re.sub(r"^\[[^]]*\]", "", line) for line in stderr.splitlines() if "[ERROR]" in line]


@pytest.fixture
def forks() -> ForkServer:
    server = ForkServer()
    yield server
    server.close()


def test_a_forked_run_fails_as_a_fresh_interpreter_does(tmp_path: Path, forks) -> None:
    args = [*FAST, "steps=2", "style_weight=-1"]
    forked = forks.run([*args, "hydra.run.dir=forked"], cwd=tmp_path, env=cli_env(), timeout=300)
    fresh = run_cli(*args, "hydra.run.dir=fresh", cwd=tmp_path, fresh=True)
    assert forked.returncode == fresh.returncode == 1, forked.stderr[-3000:]
    assert error_lines(forked.stderr) == error_lines(fresh.stderr) != []
    assert forked.args == [*fresh.args[:3], *args, "hydra.run.dir=forked"]
    for run in ("forked", "fresh"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert summary["status"] == "failed" and "style_weight=-1.0" in summary["error"]


def test_forked_runs_each_log_to_their_own_wandb_run(tmp_path: Path, forks) -> None:
    """W&B makes its media folder at import: a run's exit must not remove the next one's, also
    once the server has imported what the first run imported (and frozen its heap)."""
    for name in ("first", "second", "third"):
        result = forks.run(
            ["model.weights=random", "image_size=32", "steps=2", f"hydra.run.dir={name}"],
            cwd=tmp_path,
            env=cli_env(),
            timeout=300,
        )
        assert result.returncode == 0 and "lost records" not in result.stderr, result.stderr
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["status"] == "finished", summary
        assert list((tmp_path / name / "wandb").glob("offline-run-*/files/media/**/content_*.png"))


def test_a_forked_run_past_its_timeout_is_killed(tmp_path: Path, forks) -> None:
    with pytest.raises(subprocess.TimeoutExpired) as timeout:
        forks.run([*FAST, "steps=100000"], cwd=tmp_path, env=cli_env(), timeout=1)
    assert timeout.value.timeout == 1
    again = forks.run(
        [*FAST, "steps=1", "hydra.run.dir=r"], cwd=tmp_path, env=cli_env(), timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]  # the server serves the next run


@pytest.fixture
def shared_forks() -> ForkServer:
    """The session's fork server (run_cli's and start_cli's): no start-up of its own to pay."""
    assert conftest._FORKS.serves(cli_env())
    return conftest._FORKS


def test_two_forked_runs_at_once_and_sigint_to_one(tmp_path: Path, shared_forks) -> None:
    """The server serves a run while another runs; SIGINT stops a forked run as it stops a
    fresh interpreter (checkpoint saved, exit code 130)."""
    args = [*FAST, "steps=100000", "log.flush_every=1", "log.image_every=1000"]
    long = shared_forks.start([*args, "hydra.run.dir=long"], tmp_path, cli_env())
    short = shared_forks.run([*FAST, "steps=2", "hydra.run.dir=short"], tmp_path, cli_env(), 300)
    assert short.returncode == 0, short.stderr[-3000:]
    assert json.loads((tmp_path / "short" / "summary.json").read_text())["status"] == "finished"
    wait_for_rows(long, "long/losses.jsonl", tmp_path)
    long.send_signal(signal.SIGINT)
    _, stderr = long.communicate(timeout=60)
    assert long.returncode == 130 and "interrupted by SIGINT" in stderr, stderr[-3000:]
    summary = json.loads((tmp_path / "long" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and (tmp_path / "long" / "checkpoint.pt").is_file()
    assert (tmp_path / "short" / "run_id").read_text() != (tmp_path / "long" / "run_id").read_text()


def test_a_forked_process_polls_times_out_and_is_killed_as_popen(
    tmp_path: Path, shared_forks
) -> None:
    process = shared_forks.start([*FAST, "steps=100000"], tmp_path, cli_env())
    assert process.poll() is None and process.args[1:3] == ["-m", "stylelab.run"]
    assert os.getpgid(process.pid) == os.getpgid(0) and process.pid != shared_forks.server.pid
    with pytest.raises(subprocess.TimeoutExpired) as timeout:
        process.communicate(timeout=0.5)
    assert timeout.value.timeout == 0.5 and timeout.value.cmd == process.args
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.1)
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL == process.poll()
    assert isinstance(process.communicate()[1], str)
    process.kill()  # exited and reaped: nothing is sent, as with Popen


def test_later_children_import_less_and_stream_their_output(tmp_path: Path, forks) -> None:
    """A child hands the modules it imported to the server, which imports them for the next
    ones (never `python -m`'s own module); merged output reads as a pipe, line by line."""
    first = forks.start([*FAST, "steps=1", "hydra.run.dir=first"], tmp_path, cli_env())
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    assert first.imported and "stylelab.run" not in first.imported
    assert not [name for name in first.imported if name.split(".")[0] in ("tests", "__main__")]
    args = [*FAST, "steps=1", "hydra.run.dir=second"]
    second = forks.start(args, tmp_path, cli_env(), stderr_to_stdout=True)
    lines = list(second.stdout)
    assert second.returncode == 0 and any("outputs in" in line for line in lines), lines
    assert second.communicate() == ("", None)
    assert len(second.imported) < len(first.imported), second.imported


def test_another_pythonpath_gets_a_fresh_interpreter(forks) -> None:
    assert forks.serves({"PYTHONPATH": "/elsewhere"})  # no server yet: it would start with it
    forks.python = {"PYTHONPATH": "/here"}
    forks.server = SimpleNamespace()  # type: ignore[assignment]
    assert forks.serves({"PYTHONPATH": "/here", "PYTHONUNBUFFERED": "1"})
    assert not forks.serves({"PYTHONPATH": "/elsewhere"})
    forks.server = None


def test_a_shared_folder_is_made_once_and_not_after_a_failure(tmp_path_factory) -> None:
    made: list[Path] = []

    def fails(folder: Path) -> None:
        (folder / "half").touch()
        raise RuntimeError("failed")

    with pytest.raises(RuntimeError):
        shared_folder(tmp_path_factory, "fast-suite", fails)

    def make(folder: Path) -> None:
        assert not (folder / "half").exists()
        made.append(folder)
        (folder / "made").touch()

    first = shared_folder(tmp_path_factory, "fast-suite", make)
    assert shared_folder(tmp_path_factory, "fast-suite", make) == first
    assert made == [first] and (first / "made").exists()


def test_slurm_and_serial_tests_and_module_fixtures_get_one_xdist_group() -> None:
    def item(*marks: str, fixtures: tuple = ()) -> SimpleNamespace:
        found = {name: getattr(pytest.mark, name).mark for name in marks}
        defs = {name: [SimpleNamespace(scope=scope, func=func)] for name, scope, func in fixtures}
        added: list = []
        return SimpleNamespace(
            get_closest_marker=found.get,
            add_marker=added.append,
            added=added,
            module=SimpleNamespace(__name__=__name__),
            _fixtureinfo=SimpleNamespace(name2fixturedefs=defs),
        )

    slurm, serial, plain, own = item("slurm"), item("serial"), item("slow"), item("serial")
    own.get_closest_marker = {"serial": True, "xdist_group": True}.get
    sweep = item(fixtures=[("sweep", "module", error_lines), ("tmp_path", "function", json)])
    elsewhere = item(fixtures=[("one_thread", "module", ForkServer.close)])  # from conftest
    pytest_collection_modifyitems([slurm, serial, plain, own, sweep, elsewhere])
    assert [m.mark.args for m in slurm.added] == [("slurm",)]
    assert [m.mark.args for m in serial.added] == [("serial",)]
    assert [m.mark.args for m in sweep.added] == [(f"{__name__}:sweep",)]
    assert plain.added == own.added == elsewhere.added == []  # a group of its own stays


def test_grouped_tests_really_run_in_one_xdist_worker(tmp_path: Path) -> None:
    """The groups reach xdist's scheduler (its node ids), not only the marks: under pytest 9 or
    with this hook after xdist's, SLURM tests ran in both workers and two clusters collided."""
    (tmp_path / "conftest.py").write_text(
        "from tests.grouping import pytest_collection_modifyitems  # noqa: F401\n"
        "def pytest_configure(config):\n"
        "    config.addinivalue_line('markers', 'slurm: x')\n"
    )
    for name in ("a", "b", "c"):
        (tmp_path / f"test_{name}.py").write_text(
            "import os, pytest\n"
            "@pytest.mark.slurm\n"
            "@pytest.mark.parametrize('i', range(4))\n"
            "def test_worker(i):\n"
            "    with open('workers.txt', 'a') as file:\n"
            "        file.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
        )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p",
         "no:cacheprovider", "."],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers = (tmp_path / "workers.txt").read_text().split()
    assert len(workers) == 12 and len(set(workers)) == 1


def test_the_suite_registers_the_grouping_hook_before_xdist(pytestconfig) -> None:
    """The hook checked above is the one this suite runs (tests/conftest.py registers it), and
    it runs before xdist's, which reads the groups into node ids."""
    hooks = pytestconfig.pluginmanager.hook.pytest_collection_modifyitems.get_hookimpls()
    ours = [hook for hook in hooks if hook.function is pytest_collection_modifyitems]
    assert len(ours) == 1 and ours[0].tryfirst
