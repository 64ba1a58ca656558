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

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


class ForkServer:
    """The client: one server process, started on first use, serving one run at a time."""

    def __init__(self) -> None:
        self.server: subprocess.Popen | None = None
        self.python: dict[str, str] = {}
        self.unread = b""
        self.sent = 0  # requests sent, the id of the latest

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
        deadline, pid = time.monotonic() + timeout, None
        self.sent += 1
        with tempfile.TemporaryDirectory(prefix="cli-fork-") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"id": self.sent, "args": args, "cwd": str(cwd), "env": env}
            request.update(stdout=str(out), stderr=str(err))
            data = json.dumps(request).encode() + b"\n"
            while data:  # a raw pipe may take part of it
                data = data[server.stdin.write(data) :]
            try:
                pid = self._reply("pid", deadline)  # the first waits for the server's imports
                code = self._reply("code", deadline)
            except subprocess.TimeoutExpired:
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(
                    command, timeout, output=read(out), stderr=read(err)
                ) from None
            return subprocess.CompletedProcess(command, code, read(out), read(err))

    def _reply(self, key: str, deadline: float) -> int:
        """The server's reply holding `key` for the latest request, by `deadline` (replies for
        requests given up on are skipped)."""
        assert self.server is not None and self.server.stdout is not None
        while True:
            while b"\n" not in self.unread:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.server.stdout], [], [], left)[0]:
                    raise subprocess.TimeoutExpired("cli_fork", left)
                chunk = os.read(self.server.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"the fork server ended (exit code {self.server.wait()})")
                self.unread += chunk
            line, self.unread = self.unread.split(b"\n", 1)
            reply = json.loads(line)
            if reply["id"] == self.sent:
                return int(reply[key])

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
        with contextlib.suppress(Exception):  # a child that needs it reports the error
            importlib.import_module(name)
    # `python -m stylelab.run` runs it as __main__: a child must find it not imported yet.
    if sys.modules.pop("stylelab.run", None) is not None:
        del sys.modules["stylelab"].run
    folders = temporary_folders()
    requests, replies = os.fdopen(os.dup(0)), os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_RDWR), 0)
    os.dup2(0, 1)  # stray output of the server must not reach the replies
    for line in requests:
        sys.stdout.flush()
        sys.stderr.flush()
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            become_cli(request, [requests, replies], folders)
        replies.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        replies.write(json.dumps({"id": request["id"], "code": code}) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
