"""Checks the CLI runs before a synthesis starts, so that problems end in one line, not a trace.

- `overrides_checked`: wraps the Hydra entry point; an override Hydra's grammar cannot read
  (a path with spaces and accents, quotes or brackets) gets a line on how to quote it.
- `CheckOutputFolder`: a Hydra callback; an output folder that cannot be created or written
  (read-only or missing filesystem, full disk) ends the run before Hydra's own writes fail.
- `check_job`: the whole config and the run folder, before the tracker is made.
- `record_failure`: a summary.json for a run that failed before (or while) writing its own.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from stylelab.config import Config, validate
from stylelab.errors import StyleLabError
from stylelab.outputs import RunFolder
from stylelab.resources import ResourceError, check_writable
from stylelab.run_folder import SUMMARY_FILE, Status

QUOTING_HINT = "quote the value inside the override, e.g. 'pair.content=\"/my photos/a.jpg\"'"
# Spaces, non-ASCII, parentheses, quotes, and what Hydra's lexer refuses unquoted though it has
# no meaning in a value: ~ (a home folder), # (a URL's #sha256=), = (a URL's query) and others.
NEEDS_QUOTES = re.compile(r"[^\x21-\x7e]|[()'\"~#=!&;<>^`]")


def print_error(message: str) -> None:
    """The one error line, for failures before Hydra has set up the job's logging."""
    sys.stderr.write(f"[stylelab][ERROR] - {message}\n")


def unreadable_override(argument: str) -> str | None:
    """A one-line message if Hydra cannot parse `argument` because its value needs quotes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    if argument.startswith("-") or "=" not in argument:
        return None
    key, _, value = argument.partition("=")
    if value[:1] in ("'", '"') or not NEEDS_QUOTES.search(value):
        return None
    try:
        OverridesParser.create().parse_overrides([argument])
    except OverrideParseException:
        hint = QUOTING_HINT.replace("pair.content", key.lstrip("+~"))
        if not re.search(r"['\"\[\],]", value):  # one plain value: show it quoted
            hint += f"; here: '{key}=\"{value}\"'"
        return f"cannot read the override {argument!r}: {hint}"
    return None


def overrides_checked(hydra_main: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for the Hydra main: reject unreadable overrides with a quoting hint first."""

    @functools.wraps(hydra_main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:  # called as the command line, not with a config
            for argument in sys.argv[1:]:
                message = unreadable_override(argument)
                if message:
                    print_error(message)
                    sys.exit(1)
        return hydra_main(*args, **kwargs)

    return wrapper


class CheckOutputFolder(Callback):
    """Stops with one line when the run (or sweep) folder cannot be created and written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(folder: str) -> None:
        try:
            check_writable(folder)
        except ResourceError as error:
            print_error(str(error))
            sys.exit(1)


def check_job(config: Config, run_dir: Path) -> None:
    """Everything checkable before the tracker starts: the config and the run folder."""
    validate(config)
    wandb_dir = run_dir / "wandb"
    if config.logger.name == "wandb" and wandb_dir.exists() and not wandb_dir.is_dir():
        raise ResourceError(
            f"{wandb_dir} is a file, but W&B keeps its records in a folder of that name: "
            "move or delete the file, or use logger=none"
        )


def record_failure(run_dir: Path, message: str, overwrite: bool) -> None:
    """Write a failed summary.json (if `overwrite` or there is none); a full disk may forbid it."""
    if not overwrite and (run_dir / SUMMARY_FILE).exists():
        return
    with contextlib.suppress(OSError, StyleLabError):
        RunFolder(run_dir).write_summary(
            {"status": Status.FAILED, "error": message, "seconds": 0.0}
        )
