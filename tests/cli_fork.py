"""`python -m stylelab.run` without paying its imports each time: a fork server.

Run as a program, this file imports what a CLI run imports (torch, Hydra, W&B, stylelab and its
launchers: about 3 s of CPU), computes nothing, and then forks one child per request, several at
once. Each child becomes `python -m stylelab.run args...` (or another `python -m module ...` or
`python -c code ...`: `start_python`) in the request's folder and environment,
its stdout and stderr going to files: a real process, with its own pid, exit code, signals and
interpreter shutdown (atexit, thread joins), in the client's process group, as the subprocess it
replaces. A child that exits names the modules it imported beyond the server's (from the venv or
this repository, not from its own folder); the server imports them before the next fork, so later
children start warmer. `ForkServer.start` is the client side, a `subprocess.Popen` stand-in;
`ForkServer.run` gives `subprocess.run`'s results. Runs that need a fresh interpreter (a changed
PYTHONPATH, an import test) use a real subprocess instead (`tests.conftest.run_cli(fresh=True)`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRELOAD = (  # what a single run imports (python -X importtime -m stylelab.run ...), no more
    "torch",
    "hydra",
    "omegaconf",
    "wandb",
    "numpy",
    "imageio",
    "PIL.Image",
    "stylelab.run",
    "hydra_plugins.stylelab_launchers.sequential_launcher",
    "hydra_plugins.hydra_submitit_launcher.config",
)
# Where the modules a child may hand on to the server live: the standard library, the venv's
# site-packages, stylelab/ and hydra_plugins/ here (never a test's folder or tests/plugins).
WARM_ROOTS = tuple(
    os.path.join(root, "")
    for root in {
        sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")
    }
    | {str(ROOT / "stylelab"), str(ROOT / "hydra_plugins")}
)
STYLELAB_RUN = ["-m", "stylelab.run"]  # what follows `python` for a CLI run
START_S = 300  # for the server's imports (the first request) and a fork


class ForkServer:
    """The client: one server process, started on first use, serving several runs at once."""

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None
        self.python: dict[str, str] = {}
        self.unread = b""
        self.sent = 0  # requests sent, the id of the latest
        self.running: dict[int, ForkedProcess] = {}  # by request id, until their exit code

    def serves(self, env: dict) -> bool:
        """Whether a child of the server imports what a fresh `python` with `env` would."""
        return self.server is None or python_variables(env) == self.python

    def _start(self, env: dict) -> subprocess.Popen:
        if self.server is None or self.server.poll() is not None:
            self.python, self.unread, self.running = python_variables(env), b"", {}
            theirs = python_variables(os.environ)
            ours = {k: v for k, v in os.environ.items() if k not in theirs}
            self.server = subprocess.Popen(
                [sys.executable, __file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**ours, **self.python},
                bufsize=0,
            )
        return self.server

    def start(
        self, args: list[str], cwd: Path, env: dict, stderr_to_stdout: bool = False
    ) -> ForkedProcess:
        """`python -m stylelab.run args...` started as `subprocess.Popen(..., stdout=PIPE,
        stderr=PIPE or STDOUT, text=True)` would start it."""
        return self.start_python([*STYLELAB_RUN, *args], cwd, env, stderr_to_stdout)

    def start_python(
        self, argv: list[str], cwd: Path, env: dict, stderr_to_stdout: bool = False
    ) -> ForkedProcess:
        """`python argv...` (`-m module args...` or `-c code args...`) started as `start` starts
        a CLI run."""
        if argv[:1] not in (["-m"], ["-c"]) or len(argv) < 2:
            raise ValueError(f"the fork server runs `-m module ...` or `-c code ...`, not {argv}")
        server = self._start(env)
        self.sent += 1
        process = ForkedProcess(self, [sys.executable, *argv], stderr_to_stdout)
        self.running[self.sent] = process
        request = {"id": self.sent, "argv": argv, "cwd": str(cwd), "env": env}
        request.update(
            stdout=str(process.out), stderr=None if stderr_to_stdout else str(process.err)
        )
        data = json.dumps(request).encode() + b"\n"
        while data:  # a raw pipe may take part of it
            data = data[server.stdin.write(data) :]
        self.until(lambda: process.pid is not None, START_S)  # the first waits for the imports
        return process

    def run(
        self, args: list[str], cwd: Path, env: dict, timeout: float
    ) -> subprocess.CompletedProcess:
        """`python -m stylelab.run args...` as `subprocess.run(..., capture_output=True,
        text=True, timeout=timeout)` would give it."""
        return self.run_python([*STYLELAB_RUN, *args], cwd, env, timeout)

    def run_python(
        self, argv: list[str], cwd: Path, env: dict, timeout: float | None
    ) -> subprocess.CompletedProcess:
        """`python argv...` (see `start_python`) as `subprocess.run` gives it (see `run`)."""
        process = self.start_python(argv, cwd, env)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise subprocess.TimeoutExpired(process.args, timeout, out, err) from None
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def until(self, done: Callable[[], bool], timeout: float | None) -> None:
        """Read the server's replies until `done()`; TimeoutExpired after `timeout` seconds
        (0: read what is there and return)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._read(left):
                if timeout == 0:
                    return
                raise subprocess.TimeoutExpired("cli_fork", timeout or 0)

    def _read(self, timeout: float | None) -> bool:
        """Take the replies that come within `timeout`; whether any came."""
        assert self.server is not None and self.server.stdout is not None
        if not select.select([self.server.stdout], [], [], timeout)[0]:
            return False
        chunk = os.read(self.server.stdout.fileno(), 65536)
        if not chunk:
            raise RuntimeError(f"the fork server ended (exit code {self.server.wait()})")
        *lines, self.unread = (self.unread + chunk).split(b"\n")
        for line in lines:
            reply = json.loads(line)
            process = self.running[reply["id"]]
            if "pid" in reply:
                process.pid = reply["pid"]
            else:
                del self.running[reply["id"]]
                process.exited(reply["code"], reply["warm"], reply["cpu"])
        return True

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.stdin.close()
            self.server.wait(timeout=60)


class ForkedProcess:
    """A child of the fork server, as the tests use a `subprocess.Popen` (text mode, stdout and
    stderr piped): args, pid, returncode, poll, wait, communicate, send_signal, terminate, kill."""

    def __init__(self, server: ForkServer, args: list[str], merged: bool = False) -> None:
        self.server, self.args = server, args
        self.pid: int | None = None
        self.returncode: int | None = None
        self.imported: list[str] = []  # the modules it handed on to the server to import
        self.cpu_s = 0.0  # its user and system CPU time
        self.folder = tempfile.TemporaryDirectory(prefix="cli-fork-")
        self.out, self.err = Path(self.folder.name) / "stdout", Path(self.folder.name) / "stderr"
        self.stdout = Output(self, self.out)
        self.stderr = None if merged else Output(self, self.err)  # merged: in stdout

    def exited(self, code: int, imported: list[str], cpu_s: float) -> None:
        self.returncode, self.imported, self.cpu_s = code, imported, cpu_s

    def poll(self) -> int | None:
        self.server.until(lambda: self.returncode is not None, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        try:
            self.server.until(lambda: self.returncode is not None, timeout)
        except subprocess.TimeoutExpired:
            raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
        assert self.returncode is not None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        """Its (stdout, stderr) not read yet, once it exits (stderr None if merged)."""
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            out, err = self.stdout.peek(), self.stderr and self.stderr.peek()
            raise subprocess.TimeoutExpired(self.args, timeout or 0, out, err) from None
        return self.stdout.read(), self.stderr and self.stderr.read()

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # as Popen: never to a pid that may have been reused
            assert self.pid is not None
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Output:
    """A child's stdout or stderr file read as a pipe: lines as they come, to its end once the
    child has exited (text, universal newlines)."""

    def __init__(self, process: ForkedProcess, path: Path) -> None:
        self.process, self.path, self.offset = process, path, 0

    def peek(self) -> str:
        """What the child wrote that was not read yet."""
        return decode(self._unread())

    def read(self) -> str:
        data = self._unread()
        self.offset += len(data)
        return decode(data)

    def _unread(self) -> bytes:
        if not self.path.exists():
            return b""
        with self.path.open("rb") as file:
            file.seek(self.offset)
            return file.read()

    def __iter__(self) -> Iterator[str]:
        while True:
            exited = self.process.poll() is not None  # before reading: all it wrote is there
            data = self._unread()
            line = data[: data.index(b"\n") + 1] if b"\n" in data else data if exited else b""
            if line:
                self.offset += len(line)
                yield decode(line)
            elif exited:
                return
            else:
                time.sleep(0.05)


def decode(data: bytes) -> str:
    """As `subprocess` decodes in text mode (universal newlines)."""
    return data.decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def python_variables(env: dict) -> dict[str, str]:
    """The variables that change what Python imports (PYTHONPATH, PYTHONHOME, ...)."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON") and k != "PYTHONUNBUFFERED"}


def temporary_folders() -> list[tempfile.TemporaryDirectory]:
    """The TemporaryDirectory objects the imports made (W&B's media and artifact folders),
    those frozen before an earlier fork too: gc.get_objects() leaves frozen objects out, so they
    are unfrozen first (the next fork freezes them again)."""
    import warnings

    gc.unfreeze()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecated attributes warn when looked at
        return [o for o in gc.get_objects() if isinstance(o, tempfile.TemporaryDirectory)]


def warm(name: str, module: object) -> bool:
    """Whether the server may import `module` for later children: from the venv or this
    repository's stylelab/ and hydra_plugins/, not `python -m`'s own module."""
    path = getattr(module, "__file__", None)
    if name in ("stylelab.run", "__main__") or not path:
        return False
    return os.path.realpath(path).startswith(WARM_ROOTS)


def record_modules(path: str, known: set[str]) -> None:
    """At the child's exit: the modules it imported that the server may import too."""
    names = [name for name, m in list(sys.modules.items()) if name not in known and warm(name, m)]
    Path(path).write_text("".join(f"{name}\n" for name in names))


def become_python(request: dict, fds: list[int], folders: list, modules: str) -> None:
    """In the forked child: `python -m module args...` or `python -c code args...` (does not
    return)."""
    import atexit

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in fds:
        os.close(fd)
    for folder in folders:  # its own, removed when it exits (the server's stay)
        folder._finalizer.detach()
        folder.__init__(dir=os.path.dirname(folder.name))  # type: ignore[misc]
    atexit.register(record_modules, modules, set(sys.modules))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
    if request["stderr"] is None:
        os.dup2(1, 2)
    else:
        os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
    run_as_main(*request["argv"])
    sys.exit(0)


def run_as_main(option: str, target: str, *args: str) -> None:
    """What `python -m target args...` (option `-m`) or `python -c target args...` (`-c`) runs,
    in a new `__main__` module, with sys.argv and sys.path[0] as that command sets them."""
    import runpy
    import types

    sys.modules["__main__"] = types.ModuleType("__main__")  # not the server's globals
    if option == "-c":
        sys.path[0], sys.argv = "", ["-c", *args]
        exec(compile(target, "<string>", "exec"), sys.modules["__main__"].__dict__)
        return
    sys.path[0], sys.argv = os.getcwd(), ["-m", *args]  # runpy puts the module's path first
    if sys.modules.pop(target, None) is not None:  # imported by the server: run it afresh
        package, _, name = target.rpartition(".")
        if package in sys.modules:
            vars(sys.modules[package]).pop(name, None)
    runpy._run_module_as_main(target)  # type: ignore[attr-defined]


def import_all(names: list[str]) -> None:
    """Import `names`, skipping those that fail (a child that needs one reports the error);
    `stylelab.run` stays unimported: `python -m` runs it as __main__."""
    import importlib

    for name in names:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    if sys.modules.pop("stylelab.run", None) is not None:
        del sys.modules["stylelab"].run


class Server:
    """The server side: forks a child per request, reaps them as they exit, imports what they
    imported."""

    def __init__(self) -> None:
        import_all(list(PRELOAD))
        self.folders = temporary_folders()
        self.modules = tempfile.mkdtemp(prefix="cli-fork-modules-")
        self.children: dict[int, int] = {}  # request id by pid
        self.requests, self.unread = os.dup(0), b""
        self.replies = os.fdopen(os.dup(1), "w")
        os.dup2(os.open(os.devnull, os.O_RDWR), 0)
        os.dup2(0, 1)  # stray output of the server must not reach the replies
        self.wake, wake = os.pipe()
        os.set_blocking(wake, False)
        self.fds = [self.requests, self.replies.fileno(), self.wake, wake]
        signal.set_wakeup_fd(wake)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def serve(self) -> None:
        """Read requests (JSON lines) on stdin until it closes; answer each child's pid, then
        its exit code (`subprocess`'s returncode: negative for a signal)."""
        while True:
            ready = select.select([self.requests, self.wake], [], [])[0]
            if self.wake in ready:
                os.read(self.wake, 4096)
                self.reap()
            if self.requests in ready:
                chunk = os.read(self.requests, 65536)
                if not chunk:
                    return
                *lines, self.unread = (self.unread + chunk).split(b"\n")
                for line in lines:
                    self.fork(json.loads(line))

    def fork(self, request: dict) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # The server's objects out of the collector's reach: a child's collections then skip
        # them, instead of writing to (and so copying) every page of the inherited heap.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            become_python(request, self.fds, self.folders, self.record(os.getpid()))
        self.children[pid] = request["id"]
        self.reply(id=request["id"], pid=pid)

    def record(self, pid: int) -> str:
        return os.path.join(self.modules, f"{pid}.txt")

    def reap(self) -> None:
        """Answer the exit code of each child that has exited; import what it imported."""
        while self.children:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                return
            names = self.imported(pid)
            code = os.waitstatus_to_exitcode(status)
            cpu = usage.ru_utime + usage.ru_stime
            self.reply(id=self.children.pop(pid), code=code, warm=names, cpu=cpu)
            if names:
                import_all(names)
                self.folders = temporary_folders()

    def imported(self, pid: int) -> list[str]:
        """The modules the child `pid` named at its exit, not imported here yet."""
        path = Path(self.record(pid))
        names = path.read_text().split() if path.exists() else []
        path.unlink(missing_ok=True)
        return [name for name in names if name not in sys.modules]

    def reply(self, **reply: int | float | list[str]) -> None:
        self.replies.write(json.dumps(reply) + "\n")
        self.replies.flush()


if __name__ == "__main__":
    server = Server()
    server.serve()
    shutil.rmtree(server.modules, ignore_errors=True)
