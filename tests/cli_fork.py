"""`python -m stylelab.run` without paying its imports each time: a fork server.

Run as a program, this file imports what a CLI run imports (torch, Hydra, W&B, stylelab and its
launchers: about 3 s of CPU), computes nothing, and then forks one child per request. Each child
becomes `python -m stylelab.run args...` in the request's folder and environment, its stdout and
stderr going to files: a real process, with its own exit code, signals and interpreter shutdown
(atexit, thread joins), as the subprocess it replaces. `ForkServer.run` is the client side, with
`subprocess.run`'s results. Runs that need a fresh interpreter (a changed PYTHONPATH, an import
test) use a real subprocess instead (`tests.conftest.run_cli(fresh=True)`).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRELOAD = (
    "torch",
    "torchvision",
    "hydra",
    "omegaconf",
    "wandb",
    "submitit",
    "PIL.Image",
    "stylelab.run",
    "stylelab.report",
    "hydra_plugins.stylelab_launchers.batched_launcher",
    "hydra_plugins.stylelab_launchers.sequential_launcher",
    "hydra_plugins.stylelab_launchers.submitit_launchers",
)


class ForkServer:
    """The client: one server process, started on first use, serving one run at a time."""

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None
        self.python: dict[str, str] = {}
        self.unread = b""

    def serves(self, env: dict) -> bool:
        """Whether a child of the server imports what a fresh `python` with `env` would."""
        return self.server is None or python_variables(env) == self.python

    def _start(self, env: dict) -> subprocess.Popen:
        if self.server is None or self.server.poll() is not None:
            self.server = subprocess.Popen(
                [sys.executable, __file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                bufsize=0,
            )
            self.python, self.unread = python_variables(env), b""
        return self.server

    def run(
        self, args: list[str], cwd: Path, env: dict, timeout: float
    ) -> subprocess.CompletedProcess:
        """`python -m stylelab.run args...` as `subprocess.run(..., capture_output=True,
        text=True, timeout=timeout)` would give it."""
        server = self._start(env)
        command = [sys.executable, "-m", "stylelab.run", *args]
        with tempfile.TemporaryDirectory(prefix="cli-fork-") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out)}
            request["stderr"] = str(err)
            data = json.dumps(request).encode() + b"\n"
            while data:  # a raw pipe may take part of it
                data = data[server.stdin.write(data) :]
            pid = self._reply("pid", timeout)  # the first waits for the server's imports
            try:
                code = self._reply("code", timeout)
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                self._reply("code", timeout=60)
                raise subprocess.TimeoutExpired(
                    command, timeout, output=read(out), stderr=read(err)
                ) from None
            return subprocess.CompletedProcess(command, code, read(out), read(err))

    def _reply(self, key: str, timeout: float) -> int:
        """The server's next reply (a JSON line holding `key`), within `timeout` seconds."""
        assert self.server is not None and self.server.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.unread:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.server.stdout], [], [], left)[0]:
                raise subprocess.TimeoutExpired("cli_fork", timeout)
            chunk = os.read(self.server.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the fork server ended (exit code {self.server.wait()})")
            self.unread += chunk
        line, self.unread = self.unread.split(b"\n", 1)
        return int(json.loads(line)[key])

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.stdin.close()
            self.server.wait(timeout=60)


def python_variables(env: dict) -> dict[str, str]:
    """The variables that change what Python imports (PYTHONPATH, PYTHONHOME, ...)."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON") and k != "PYTHONUNBUFFERED"}


def read(path: Path) -> str:
    """A child's output as `subprocess.run(text=True)` decodes it (universal newlines)."""
    return path.read_text(errors="replace") if path.exists() else ""


def temporary_folders() -> list[tempfile.TemporaryDirectory]:
    """The TemporaryDirectory objects the imports made (W&B's media and artifact folders)."""
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecated attributes warn when looked at
        return [o for o in gc.get_objects() if isinstance(o, tempfile.TemporaryDirectory)]


def become_cli(request: dict, channels: list, folders: list) -> None:
    """In the forked child: `python -m stylelab.run args...` (does not return)."""
    import runpy

    for channel in channels:
        channel.close()
    for folder in folders:  # its own, removed when it exits (the server's stay)
        folder._finalizer.detach()
        folder.__init__(dir=os.path.dirname(folder.name))  # type: ignore[misc]
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.path[0] = os.getcwd()  # as `python -m` puts it
    sys.argv = ["-m", *request["args"]]
    runpy._run_module_as_main("stylelab.run")  # type: ignore[attr-defined]
    sys.exit(0)


def serve() -> None:
    """Read requests (JSON lines) on stdin; per request, fork a child and answer its pid, then
    its exit code (`subprocess`'s returncode: negative for a signal)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    # `python -m stylelab.run` runs it as __main__: a child must find it not imported yet.
    sys.modules.pop("stylelab.run")
    del sys.modules["stylelab"].run
    folders = temporary_folders()
    requests, replies = os.fdopen(os.dup(0)), os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_RDWR), 0)
    os.dup2(0, 1)  # stray output of the server must not reach the replies
    for line in requests:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            become_cli(json.loads(line), [requests, replies], folders)
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
