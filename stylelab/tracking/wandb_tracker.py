"""Weights & Biases tracker: config, per-step losses, images, the GIF, a comparison table."""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np

from stylelab.tracking.base import (
    InputFile,
    RunInfo,
    Tracker,
    TrackerError,
    raise_error,
    record_error,
    report_at_finish,
)
from stylelab.tracking.wandb_artifacts import ARTIFACT_KINDS, artifact_name, log_files, use_inputs
from stylelab.tracking.wandb_file import RunFileReader

log = logging.getLogger(__name__)
MODES = ("auto", "online", "offline", "disabled")
WandbMode = Literal["online", "offline", "disabled"]
# The mode each value of logger.mode (but auto) or WANDB_MODE (wandb's old names too) means.
_MODE_OF: dict[str, WandbMode] = {
    "online": "online",
    "offline": "offline",
    "disabled": "disabled",
    "dryrun": "offline",
    "run": "online",
}
THUMBNAIL = 128
PROJECT_MAX_LEN = 128  # wandb.Settings.validate_project
PROJECT_BAD_CHARS = "/\\#?%:"
TAG_MAX_LEN = 64
FILE_FLUSH_SECONDS = 0.25  # how often W&B writes its buffered records to the .wandb file
WRITE_TIMEOUT_SECONDS = 10.0  # how long flush() waits for W&B to write before calling it lost
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_offline_lineage_noted = False  # the notice that input lineage needs online mode, once


def has_api_key() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = (
        urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        or "api.wandb.ai"
    )
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def clear_blank_mode() -> None:
    """An exported but empty WANDB_MODE means unset (wandb itself rejects it)."""
    if "WANDB_MODE" in os.environ and not os.environ["WANDB_MODE"].strip():
        del os.environ["WANDB_MODE"]


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise TrackerError(f"logger.mode={mode}: use one of {', '.join(MODES)}")


def resolve_mode(mode: str) -> WandbMode:
    """`auto`: WANDB_MODE if set, else online with an API key and offline without."""
    check_mode(mode)
    if mode != "auto":
        return _MODE_OF[mode]
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in _MODE_OF:
        return _MODE_OF[env]
    return "online" if has_api_key() else "offline"


def project_problem(project: str) -> str | None:
    """W&B's own rule for project names: what is wrong with `project`, or None."""
    bad = sorted({char for char in project if char in PROJECT_BAD_CHARS})
    if project.strip() and len(project) <= PROJECT_MAX_LEN and not bad:
        return None
    return (
        f"needs 1 to {PROJECT_MAX_LEN} characters (this has {len(project)}) and none of "
        f"{' '.join(PROJECT_BAD_CHARS)}" + (f" (found {' '.join(bad)})" if bad else "")
    )


def check_project(project: str) -> None:
    """W&B's own rule for project names, checked before anything starts."""
    problem = project_problem(project)
    if problem:
        raise TrackerError(f"logger.project={project!r}: a W&B project name {problem}")


def check_artifacts(artifacts: list[str] | tuple[str, ...]) -> None:
    unknown = [kind for kind in artifacts if kind not in ARTIFACT_KINDS]
    if unknown:
        raise TrackerError(
            f"logger.artifacts={list(artifacts)}: {', '.join(map(str, unknown))} is not an "
            f"artifact kind; use a list of {', '.join(ARTIFACT_KINDS)} ([] for none)"
        )


def check_tags(tags: list[str]) -> None:
    for tag in tags:
        if len(str(tag)) > TAG_MAX_LEN:
            raise TrackerError(
                f"W&B tag {str(tag)[:40]}... (from logger.tags or a pair, layers or optim name): "
                f"W&B tags have at most {TAG_MAX_LEN} characters"
            )


def check_settings(
    mode: str, project: str, artifacts: list[str] | tuple[str, ...], tags: list[str]
) -> None:
    """The logger's settings by W&B's rules, before a job starts (validation; the project's
    line names it as given, shortened)."""
    check_mode(mode)
    problem = project_problem(project or "")
    if problem:
        shown = f"{project[:40]}{'...' if len(project) > 40 else ''}"
        raise TrackerError(f"logger.project={shown}: W&B {problem}")
    check_artifacts(artifacts)
    check_tags(tags)


class _StopWaiting(BaseException):
    """Raised by the signal handler to abandon a W&B call (wandb catches only Exception)."""


@contextlib.contextmanager
def stop_on_signal(received: list[int]) -> Iterator[None]:
    """While waiting on W&B, SIGINT/SIGTERM abandon the wait at once (noted in `received`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        received.append(signum)
        raise _StopWaiting

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def no_error_reports() -> Iterator[None]:
    """wandb 0.31 reports a failed online start to the same server at exit, hanging 20 s more
    when it is unreachable; skip that report unless WANDB_ERROR_REPORTING is set."""
    if "WANDB_ERROR_REPORTING" in os.environ:
        yield
        return
    os.environ["WANDB_ERROR_REPORTING"] = "false"
    try:
        yield
    finally:
        os.environ.pop("WANDB_ERROR_REPORTING", None)


def thumbnail(image: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    from PIL import Image

    picture = Image.fromarray(image)
    picture.thumbnail((size, size))
    return np.asarray(picture)


def abandon_service() -> None:
    """End wandb-core after an abandoned online start: it would keep the process alive at exit
    until init_timeout ran out. The next wandb.init starts a fresh one (private wandb 0.31 API,
    so every step is optional)."""
    import wandb
    from wandb.sdk import wandb_setup

    connection = getattr(wandb_setup.singleton(), "_connection", None)
    process = getattr(getattr(connection, "_proc", None), "_process", None)

    def teardown() -> None:
        with contextlib.suppress(BaseException):  # SystemExit(-9) once the process is killed
            wandb.teardown()

    thread = threading.Thread(target=teardown, name="wandb-teardown", daemon=True)
    thread.start()
    thread.join(0.5)
    if thread.is_alive() and process is not None:
        process.kill()
        thread.join(5)


class WandbTracker(Tracker):
    """Logs a run to W&B; a W&B problem never stops the synthesis, but lost records fail the run
    at the next `flush()` or at `finish()` (see `Tracker`)."""

    def __init__(
        self,
        mode: str = "auto",
        project: str = "stylelab",
        entity: str | None = None,
        job_type: str = "synthesis",
        notes: str | None = None,
        init_timeout: float = 15.0,
        artifacts: list[str] | tuple[str, ...] = ("result",),
    ):
        clear_blank_mode()
        self.mode = resolve_mode(mode)
        # Online, a stop signal must end the wait for an unreachable server (main thread only).
        self.starts_in_background = self.mode != "online"
        check_project(project)
        if not init_timeout > 0:
            raise TrackerError(f"logger.init_timeout={init_timeout}: must be > 0 seconds")
        self.project, self.entity, self.job_type, self.notes = project, entity, job_type, notes
        self.init_timeout = float(init_timeout)
        check_artifacts(artifacts)
        self.artifacts = set(artifacts)
        self.run: Any = None
        self.run_id: str | None = None
        self.info: RunInfo | None = None
        self.pending: dict[int | None, dict[str, Any]] = {}  # images waiting for their step's row
        self.last_step: int | None = None
        self.defined: set[str] = set()  # metrics given a summary
        self.written: RunFileReader | None = None  # what W&B has put on disk

    def start(self, info: RunInfo) -> None:
        self.info = info
        kwargs = dict(
            project=self.project,
            entity=self.entity,
            name=info.name,
            group=info.group,
            job_type=self.job_type,
            tags=[str(tag) for tag in info.tags if tag],
            notes=self.notes,
            config=info.config,
            dir=str(info.run_dir),
            id=info.resume_id,
            resume="allow" if info.resume_id else None,
        )
        received: list[int] = []
        if self.mode == "online":
            self.run = self._init_online(kwargs, received)
        if self.run is None:
            self.run = self._init(self.mode, kwargs)
        self.run_id = self.run.id
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        sync_file = Path(self.run.settings.sync_file or "")
        if self.mode != "disabled" and sync_file.is_file():
            self.written = RunFileReader(sync_file)
        if self.mode == "offline":
            log.info("W&B is offline; upload later with: wandb sync %s", Path(self.run.dir).parent)
        for signum in received:  # hand Ctrl-C to whoever handled it before (the runner)
            signal.raise_signal(signum)

    def _init(self, mode: WandbMode, kwargs: dict[str, Any], **settings: Any) -> Any:
        import wandb

        if "x_transaction_log_flush_interval" in wandb.Settings.model_fields:
            settings["x_transaction_log_flush_interval"] = FILE_FLUSH_SECONDS
        # create_new: a batch (hydra/launcher=batched) keeps several runs live in one process
        settings.setdefault("reinit", "create_new")
        return wandb.init(mode=mode, settings=wandb.Settings(**settings), **kwargs)

    def _init_online(self, kwargs: dict[str, Any], received: list[int]) -> Any:
        """The online run, or None (after removing its empty folder) when W&B does not answer
        within `init_timeout` or a stop signal arrives meanwhile."""
        import wandb  # before the signal handler: an interrupted import breaks the module

        wandb.setup()
        wandb_dir = Path(kwargs["dir"]) / "wandb"
        before = set(wandb_dir.glob("run-*"))
        log.info(
            "contacting W&B (up to %g s; Ctrl-C to stop the run, logger.mode=offline to skip)",
            self.init_timeout,
        )
        try:
            with no_error_reports(), stop_on_signal(received):
                # quiet: no "logged in as" lookup, which costs two more timeouts when unreachable
                return self._init("online", kwargs, init_timeout=self.init_timeout, quiet=True)
        except (Exception, _StopWaiting) as error:
            reason = "stopped by a signal" if received else str(error).splitlines()[0]
            log.warning("W&B unreachable (%s): logging offline instead", reason)
            if received:
                abandon_service()
        for ghost in set(wandb_dir.glob("run-*")) - before:
            shutil.rmtree(ghost, ignore_errors=True)
        self.mode = "offline"
        return None

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.run is None:
            return
        self._summarise_minimum(metrics)
        row: dict[str, Any] = {"step": step, **metrics}
        row.update(self.pending.pop(None, {}))
        row.update(self.pending.pop(step, {}))
        self._log(row, step)

    def _summarise_minimum(self, metrics: dict[str, float]) -> None:
        """The summary keeps the minimum of each loss kind and the total (`loss/<kind>`)."""
        for key in metrics:
            if key not in self.defined and key.count("/") == 1 and key.startswith("loss/"):
                self.run.define_metric(key, step_metric="step", summary="min")
                self.defined.add(key)

    def log_image(
        self, key: str, image: np.ndarray, step: int | None = None, caption: str = ""
    ) -> None:
        if self.run is None:
            return
        import wandb

        try:  # uint8 on purpose: wandb 0.31 logs float images as black.
            self.pending.setdefault(step, {})[f"images/{key}"] = wandb.Image(
                np.ascontiguousarray(image, dtype=np.uint8), caption=caption or None
            )
        except Exception as error:  # e.g. no space left for the PNG
            self._lost(f"could not store image {key} ({str(error).splitlines()[0]})")

    def log_inputs(self, inputs: dict[str, InputFile]) -> None:
        """The digests into the run's config; with `inputs` in `artifacts`, online, the files
        as used artifacts (W&B's lineage graph)."""
        global _offline_lineage_noted
        if self.run is None or self.mode == "disabled":
            return
        digests = {role: {"source": i.source, "sha256": i.sha256} for role, i in inputs.items()}
        self.run.config.update({"inputs": digests}, allow_val_change=True)
        if not self._logs("inputs") or not inputs:
            return
        if self.mode == "online":
            use_inputs(self.run, inputs)
        elif not _offline_lineage_noted:
            _offline_lineage_noted = True
            log.info(
                "input lineage needs W&B online (%s now): the inputs' SHA-256 are in "
                "summary.json and the run's config",
                self.mode,
            )

    def _logs(self, kind: str) -> bool:
        """Artifacts of `kind` are asked for and go somewhere (not with logger.mode=disabled)."""
        return self.run is not None and self.mode != "disabled" and kind in self.artifacts

    def log_checkpoint(self, files: list[Path], step: int) -> None:
        if self._logs("checkpoint"):
            name = artifact_name("checkpoint", self.run.id)
            log_files(self.run, name, "checkpoint", files, {"step": step}, [f"step-{step}"])

    def log_result(self, files: list[Path], metadata: dict[str, Any], aliases: list[str]) -> None:
        if self._logs("result"):
            log_files(self.run, artifact_name("result", self.run.id), "result", files, metadata,
                      aliases)  # fmt: skip

    def flush(self) -> None:
        """Return once the .wandb file holds every row logged so far (SIGKILL-safe)."""
        if self.run is not None and self.last_step is not None:
            step = self.last_step
            self._wait_written(
                lambda r: r.last_step is not None and r.last_step >= step, f"step {step}"
            )
        raise_error(self)

    def _wait_written(self, done: Callable[[RunFileReader], bool], what: str) -> None:
        """Poll the .wandb file until `done`; past WRITE_TIMEOUT_SECONDS the records count as lost."""
        if self.written is None:
            return
        deadline = time.monotonic() + WRITE_TIMEOUT_SECONDS
        while True:
            self.written.update()
            if done(self.written):
                return
            if time.monotonic() > deadline:
                self._lost(f"{what} not in {self.written.path} after {WRITE_TIMEOUT_SECONDS:g} s")
                return
            time.sleep(0.02)

    def finish(self, exit_code, summary, final_image=None, gif_path=None, inputs=None) -> None:
        if self.run is None:
            report_at_finish(self, exit_code)
            return
        try:
            self._log_final(summary, final_image, gif_path, inputs)
        except Exception as error:
            self._lost(f"could not log the final records ({str(error).splitlines()[0]})")
        finally:
            run, self.run = self.run, None
            try:
                run.finish(exit_code=exit_code)
            except Exception as error:  # e.g. wandb-core already gone after a SIGTERM
                self._lost(f"could not finish the run cleanly ({str(error).splitlines()[0]})")
        if self.error is None:
            self._wait_written(lambda r: r.exited, "the end of the run")
        report_at_finish(self, exit_code)

    def _log_final(self, summary, final_image, gif_path, inputs) -> None:
        """The final image, the GIF and the table as one more row after the last step."""
        import wandb

        row: dict[str, Any] = {}
        for images in self.pending.values():
            row.update(images)
        self.pending = {}
        if final_image is not None:
            row["images/final"] = wandb.Image(final_image, caption="final")
            if inputs and self.info is not None:
                row["comparison"] = self._table(final_image, inputs, summary)
        if gif_path is not None and Path(gif_path).exists():
            row["synthesis_gif"] = wandb.Video(str(gif_path), format="gif")
        if row:
            step = self.last_step + 1 if self.last_step is not None else 0
            self._log({"step": step, **row}, step)
        self.run.summary.update({key: value for key, value in summary.items() if value is not None})

    def _table(
        self, final_image: np.ndarray, inputs: dict[str, np.ndarray], summary: dict[str, Any]
    ) -> Any:
        import wandb

        assert self.info is not None
        hyper = {  # numbers stay numbers: the table sorts and plots them
            key: value if isinstance(value, (bool, int, float)) else str(value)
            for key, value in self.info.swept.items()
        }
        finals = {
            key: value for key, value in summary.items() if key.startswith(("final/", "eval/"))
        }
        # content, style, style_2, ...
        columns: list[str | int] = [*inputs, "output", *hyper, *finals]
        images = [wandb.Image(thumbnail(image)) for image in [*inputs.values(), final_image]]
        return wandb.Table(columns=columns, data=[[*images, *hyper.values(), *finals.values()]])

    def _log(self, row: dict[str, Any], step: int) -> None:
        """One committed row: W&B writes it out at its next file flush, not at the next row."""
        try:
            self.run.log(row, step=step, commit=True)
            self.last_step = step
        except Exception as error:
            self._lost(f"could not log step {step} ({str(error).splitlines()[0]})")

    def _lost(self, detail: str) -> None:
        where = self.info.run_dir if self.info is not None else "the run folder"
        record_error(
            self,
            f"W&B lost records: {detail}; losses and images are complete in {where}; "
            "free disk space (or fix the cause) and rerun, or use logger=none",
        )
