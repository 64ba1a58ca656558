"""An offline comparison report of a sweep, from its run folders alone (no W&B needed).

    python -m stylelab.report multirun/2024-05-01/12-00-00 [MORE SWEEPS ...] [--out report.html]
        [--rows KEY] [--cols KEY] [--color-by KEY] [--label-by KEY]

writes one self-contained HTML page (images embedded as data URIs, so it works when moved): a grid
of the final images whose rows and columns are the swept keys (detected from each job's
`.hydra/overrides.yaml`), the trade-off plot of the evaluation's `eval/content` against
`eval/style` with the Pareto-optimal runs, the loss curves coloured by a swept key, the per-layer
losses weighted and unweighted, the mean and spread over seeds when `seed` is swept, and a
sortable table of hyperparameters, metrics and final losses in which failed jobs show their status
and error. Several sweeps (or a folder holding sweeps) make one page, with `sweep` as a key. The
loading and plotting functions are also what `notebooks/compare_runs.ipynb` uses, for local
folders and for W&B runs alike.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stylelab import run_folder
from stylelab.columns import COLUMNS, config_value
from stylelab.pareto import EVAL_KEYS, as_float
from stylelab.run_folder import (
    CONFIG_FILE,
    HYDRA_DIR,
    LOG_FILE,
    OVERRIDES_FILE,
    Status,
    is_job_folder,
    read_losses,
    read_overrides,
    read_summary,
    status_of,
)

EXIT_USAGE = 2
ROW_FIELDS = ("step", "stage", "size")  # loss rows' bookkeeping, not losses
# content.png, style.png, style_2.png, ..., and the styles' masks mask.png, mask_2.png, ...
INPUT_IMAGES = re.compile(r"^(content|style(_\d+)?|mask(_\d+)?)$")
IGNORED_KEYS = ("hydra", "logger", "resume", "debug", "experiment")  # never grid axes
MIME = {"PNG": "image/png", "GIF": "image/gif", "JPEG": "image/jpeg"}
MAX_IMAGE_BYTES = 64 * 2**20  # larger files are not embedded (a 4096 px PNG is ~50 MB)
MISSING_IMAGE = "final.png missing or not an image"


class ReportError(Exception):
    """A problem the user can fix; the command line prints it as one line and exits with 2."""


@dataclass
class Job:
    """One run of a sweep: what its folder (or its W&B run) recorded."""

    name: str
    overrides: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    losses: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, Path] = field(default_factory=dict)  # final, content, style, style_2...

    @property
    def status(self) -> str:
        return status_of(self.summary)

    @property
    def error(self) -> str:
        return str(self.summary.get("error", ""))

    def value(self, key: str) -> str | None:
        """`key` as overridden on the command line, else from the resolved config: a dotted key
        or a table column (`layers` is `layers.name`)."""
        if key in self.overrides:
            return self.overrides[key]
        node = config_value(self.config, key, default={})
        return str(node) if not isinstance(node, dict) else None

    def curve(self, term: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one loss term, skipping missing values."""
        points = [(row["step"], as_float(row.get(term))) for row in self.losses if "step" in row]
        known = [(step, value) for step, value in points if value is not None]
        return [step for step, _ in known], [value for _, value in known]


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """`["+a.b=1", "c=skimage\\:coffee", "d='x y'"]` -> `{"a.b": "1", "c": "skimage:coffee", "d": "x y"}`."""
    parsed = {}
    for override in overrides:
        key, sep, value = str(override).partition("=")
        if sep:
            if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]  # a Hydra quoted string
            parsed[key.lstrip("+~")] = re.sub(r"\\(.)", r"\1", value)
    return parsed


def job_folders(folder: Path) -> list[Path]:
    """The job folders of a multirun folder in job order (or the folder itself if it is one run)."""
    return [folder] if is_job_folder(folder) else run_folder.job_folders(folder)


def find_sweeps(root: str | Path) -> list[Path]:
    """Folders under `root` that hold run folders, newest first (by their latest job's start)."""
    started: dict[Path, float] = {}
    for path in Path(root).glob(f"**/{OVERRIDES_FILE}"):
        sweep = path.parent.parent.parent
        started[sweep] = max(started.get(sweep, 0.0), path.stat().st_mtime)
    return sorted(started, key=started.__getitem__, reverse=True)


def resolve_folder(path: str | Path) -> Path:
    """A relative folder from the working directory or, where it is not there, from the nearest
    parent that has it: a notebook's kernel runs in `notebooks/`, while the README's commands
    (`STYLELAB_SWEEP_DIR=multirun/...`) name folders from the repository root."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return next((parent / path for parent in Path.cwd().parents if (parent / path).exists()), path)


def latest_sweep(root: str | Path = "multirun") -> Path | None:
    """The newest multirun folder under `root`, or None."""
    sweeps = find_sweeps(root)
    return sweeps[0] if sweeps else None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.exists() else None
    except (yaml.YAMLError, OSError):
        return None


def _last_error(log_file: Path) -> str:
    lines = log_file.read_text(errors="replace").splitlines() if log_file.exists() else []
    errors = [line.split("[ERROR] - ", 1)[-1] for line in lines if "[ERROR]" in line]
    return errors[-1] if errors else ""


def load_job(folder: Path) -> Job:
    """Read one run folder; a killed or broken run still gives a Job (with its status and, for a
    run killed or failed without a message, the last error line of its run.log)."""
    overrides = read_overrides(folder) or []
    config = _read_yaml(folder / CONFIG_FILE) or _read_yaml(folder / HYDRA_DIR / CONFIG_FILE) or {}
    summary = read_summary(folder)
    if summary["status"] != Status.FINISHED:
        logged = _last_error(folder / LOG_FILE)
        if logged and (summary["status"] == Status.KILLED or not summary.get("error")):
            summary["error"] = logged  # what the job said before it died
    images = {
        path.stem: path
        for path in sorted(folder.glob("*.png"))
        if (path.stem == "final" or INPUT_IMAGES.match(path.stem)) and image_bytes(path)
    }
    return Job(
        folder.name, parse_overrides(overrides), config, summary, read_losses(folder), images
    )


def loss_kinds(jobs: list[Job]) -> list[str]:
    """The loss kinds the runs logged (`total` first), from their loss rows: every key that
    names neither a single layer's term (`style/conv1_1`) nor the row's step, stage or size."""
    kinds = ["total"]
    for job in jobs:
        for row in job.losses[:1]:
            kinds += [k for k in row if "/" not in k and k not in ROW_FIELDS and k not in kinds]
    return kinds


def final_keys(jobs: list[Job]) -> list[str]:
    """The summary's final loss of each kind, then the wall time."""
    return [f"final/{kind}" for kind in loss_kinds(jobs)] + ["seconds"]


def eval_keys(jobs: list[Job]) -> list[str]:
    """The evaluation's metrics any run recorded (`eval/content`, `eval/style`, ...)."""
    return [key for key in EVAL_KEYS if any(key in job.summary for job in jobs)]


def load_jobs(folder: str | Path) -> list[Job]:
    """Every job of a multirun folder; ReportError (with a hint) when there are none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ReportError(
            f"{folder}: no such folder; give a multirun folder such as multirun/<date>/<time>"
        )
    jobs = [load_job(path) for path in job_folders(folder)]
    if not jobs:
        inside = find_sweeps(folder)
        hint = f"; the newest multirun in it is {inside[0]}" if inside else ""
        raise ReportError(f"{folder}: no runs here (a run folder has a .hydra/ folder){hint}")
    return jobs


def split_run_name(name: str) -> list[str]:
    """A W&B run name made by `stylelab.run.run_name` (`a=1,b=[0,5],c=x`) back into overrides."""
    return [part for part in re.split(r",(?=[+~]?[\w.@/-]+=)", name or "") if "=" in part]


def job_from_wandb(run: Any, download_dir: str | Path) -> Job:
    """A Job from a W&B public-API run: config, summary, per-step losses (`scan_history`) and the
    final/content/style images, downloaded into `download_dir/<run id>/`."""
    summary = dict(run.summary_metrics)
    summary.setdefault("status", run.state)
    loss_keys = [k for k in summary if k.startswith("loss/") and k.count("/") == 1]
    keys = ["step", *loss_keys]
    losses = [
        {"step": row["step"], **{key.removeprefix("loss/"): row.get(key) for key in keys[1:]}}
        for row in run.scan_history(keys=keys)
    ]
    job = Job(run.id, parse_overrides(split_run_name(run.name)), dict(run.config), summary, losses)
    for key in COLUMNS:  # a renamed run still has its hyperparameters
        if key not in job.overrides and job.value(key) is not None:
            job.overrides[key] = str(job.value(key))
    folder = Path(download_dir) / run.id
    for key in [k.removeprefix("images/") for k in summary if k.startswith("images/")]:
        media = summary.get(f"images/{key}")
        if key != "final" and not INPUT_IMAGES.match(key):
            continue
        if isinstance(media, dict) and media.get("path"):
            run.file(media["path"]).download(root=str(folder), replace=True)
            job.images[key] = folder / media["path"]
    return job


def jobs_from_wandb(path: str, group: str, download_dir: str | Path, api: Any = None) -> list[Job]:
    """The runs of one W&B group (`entity/project`, e.g. `me/stylelab`), oldest first."""
    if api is None:
        import wandb

        api = wandb.Api()
    runs = sorted(api.runs(path, filters={"group": group}), key=lambda run: str(run.created_at))
    if not runs:
        raise ReportError(f"W&B {path}: no runs in group {group}")
    return [job_from_wandb(run, download_dir) for run in runs]


def swept_keys(jobs: list[Job]) -> tuple[list[str], list[str]]:
    """(axes, varying): override keys whose values differ across jobs, and of those the ones that
    are not implied by an earlier key (e.g. `pair.content` set per `pair` is not an axis)."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    keys = [key for key in keys if not key.startswith(IGNORED_KEYS)]
    varying = [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]

    def implies(a: str, b: str) -> bool:
        seen: dict[str | None, str | None] = {}
        return all(
            seen.setdefault(job.overrides.get(a), job.overrides.get(b)) == job.overrides.get(b)
            for job in jobs
        )

    axes: list[str] = []
    for key in varying:
        if not any(implies(axis, key) for axis in axes):
            axes.append(key)
    return axes, varying


def label(value: str | None) -> str:
    """A short display form: `1000000.0` -> `1e+06`, None -> `-`."""
    if value is None:
        return "-"
    number = as_float(value)
    return f"{number:g}" if number is not None and re.fullmatch(r"[-+0-9.eE]+", value) else value


def check_keys(jobs: list[Job], options: dict[str, str | None]) -> None:
    """ReportError when an option names a key no run has."""
    varying = swept_keys(jobs)[1]
    for option, key in options.items():
        if key and all(job.value(key) is None for job in jobs):
            raise ReportError(
                f"{option} {key}: no run has that key; the swept keys are {', '.join(varying) or 'none'}"
            )


def plot_keys(
    jobs: list[Job], keys: list[str], color_by: str | None = None, label_by: str | None = None
) -> tuple[str | None, str | None]:
    """(colour key, label/line-style key) of the plots: the given ones, else the grid's column
    key and row key (the swept keys, `seed` last: seeds are averaged, not told apart)."""
    check_keys(jobs, {"--color-by": color_by, "--label-by": label_by})
    free = [key for key in keys if key not in (color_by, label_by)]
    free.sort(key=lambda key: key == "seed")
    if len(free) > 1 and color_by is None and label_by is None:
        free[:2] = [free[1], free[0]]  # colour by the columns' key, label by the rows'
    color_by = color_by or (free.pop(0) if free else None)
    label_by = label_by or (free.pop(0) if free else None)
    return color_by, (label_by if label_by != "seed" else None)


def choose_axes(
    jobs: list[Job], rows: str | None, cols: str | None
) -> tuple[str | None, str | None, list[str]]:
    """(row key, column key, caption keys); one swept key gives a single row."""
    axes, varying = swept_keys(jobs)
    check_keys(jobs, {"--rows": rows, "--cols": cols})
    free = [key for key in axes if key not in (rows, cols)]
    if rows is None and cols is None and len(free) == 1:
        cols = free.pop(0)  # one swept key: a single row
    if rows is None and free:
        rows = free.pop(0)
    if cols is None and free:
        cols = free.pop(0)
    return rows, cols, [key for key in varying if key not in (rows, cols)]


def image_bytes(path: Path) -> tuple[bytes, str] | None:
    """(content, MIME type) of `path` if it is a regular file (not a symlink, FIFO or device) of
    at most MAX_IMAGE_BYTES that Pillow reads as a PNG, GIF or JPEG; else None. Only such files
    are embedded, so a report never carries (or hangs on) whatever a file name points to."""
    from PIL import Image

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_IMAGE_BYTES:
                return None
            data = file.read(MAX_IMAGE_BYTES + 1)
    except OSError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            mime = MIME.get(image.format or "")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return (data, mime) if mime and len(data) <= MAX_IMAGE_BYTES else None


def data_uri(path: Path) -> str | None:
    """The image at `path` as a data URI, or None if it may not be embedded (`image_bytes`)."""
    found = image_bytes(path)
    if found is None:
        return None
    data, mime = found
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def loss_figure(
    jobs: list[Job],
    run_label: Callable[[Job], str] | None = None,
    terms: Iterable[str] | None = None,
    color_by: str | None = None,
    style_by: str | None = None,
):
    """A matplotlib Figure: one log-scale panel per loss term, one line per run (Agg, no pyplot).
    With `color_by` the colour is that key's setting and the line style `style_by`'s (legend:
    one entry per setting); without, one colour per run."""
    from matplotlib.figure import Figure

    if color_by or style_by:
        return keyed_loss_figure(jobs, terms, color_by, style_by)
    terms = list(terms) if terms is not None else loss_kinds(jobs)
    run_label = run_label or (lambda job: job.name)
    figure = Figure(figsize=(5 * len(terms), 4.2), layout="constrained")
    axes = figure.subplots(1, len(terms), squeeze=False)[0]
    styles = ("-", "--", ":", "-.")
    for ax, term in zip(axes, terms, strict=True):
        positive = False
        for i, job in enumerate(jobs):
            steps, values = job.curve(term)
            if steps:
                ax.plot(
                    steps,
                    values,
                    color=f"C{i % 10}",
                    linestyle=styles[i // 10 % 4],
                    marker="." if len(steps) < 20 else None,
                    label=run_label(job),
                )
                positive = positive or any(v > 0 for v in values if math.isfinite(v))
        if positive:
            ax.set_yscale("log", nonpositive="mask")
        ax.set(title=f"{term} loss", xlabel="step")
        ax.grid(True, which="major", alpha=0.3)
    if any(ax.lines for ax in axes):
        figure.legend(
            *axes[0].get_legend_handles_labels(),
            loc="outside lower center",
            ncol=min(len(jobs), 4),
            fontsize="small",
        )
    return figure


def keyed_loss_figure(
    jobs: list[Job], terms: Iterable[str] | None, color_by: str | None, style_by: str | None
):
    """`loss_figure` with one colour per setting of `color_by`, one line style per `style_by`."""
    from matplotlib.figure import Figure

    from stylelab.plotting import KeyStyle

    terms = list(terms) if terms is not None else loss_kinds(jobs)
    style = KeyStyle(jobs, color_by, style_by)
    figure = Figure(figsize=(5 * len(terms), 4.2), layout="constrained")
    axes = figure.subplots(1, len(terms), squeeze=False)[0]
    for ax, term in zip(axes, terms, strict=True):
        for job in jobs:
            steps, values = job.curve(term)
            if steps:
                ax.plot(steps, values, color=style.color(job), linestyle=style.linestyle(job),
                        marker="." if len(steps) < 20 else None, alpha=0.85)  # fmt: skip
        if any(v > 0 for line in ax.lines for v in line.get_ydata() if math.isfinite(v)):
            ax.set_yscale("log", nonpositive="mask")
        ax.set(title=f"{term} loss", xlabel="step")
        ax.grid(True, which="major", alpha=0.3)
    handles = style.legend_handles()
    if handles and any(ax.lines for ax in axes):
        figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
                      fontsize="small")  # fmt: skip
    return figure


def figure_uri(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell(job: Job, caption_keys: list[str]) -> dict[str, Any]:
    """One job's figure in the grid: its final image, else its status and error."""
    caption = ", ".join(f"{key}={label(job.value(key))}" for key in caption_keys)
    total = as_float(job.summary.get("final/total"))
    detail = f"job {job.name}" + (f", total {total:.4g}" if total is not None else "")
    uri = data_uri(job.images["final"]) if "final" in job.images else None
    finished = job.status == Status.FINISHED
    return {
        "uri": uri if finished else None,
        "name": job.name,
        "status": job.status,
        "error": job.error or (MISSING_IMAGE if finished else ""),
        "lines": [part for part in (caption, detail) if part],
    }


def grid_model(jobs: list[Job], rows: str | None = None, cols: str | None = None) -> dict:
    """The image grid's header and cells (each a list of `_cell`s)."""
    rows, cols, caption_keys = choose_axes(jobs, rows, cols)
    row_values = list(dict.fromkeys(job.value(rows) for job in jobs)) if rows else [None]
    col_values = list(dict.fromkeys(job.value(cols) for job in jobs)) if cols else [None]
    body = []
    for row in row_values:
        cells = []
        for col in col_values:
            found = [
                j
                for j in jobs
                if (not rows or j.value(rows) == row) and (not cols or j.value(cols) == col)
            ]
            cells.append([_cell(job, caption_keys) for job in found])
        body.append({"header": f"{rows}={label(row)}" if rows else "", "cells": cells})
    head = [f"{cols}={label(value)}" if cols else "" for value in col_values]
    return {"rows": rows, "cols": cols, "head": head, "body": body}


def grid_html(jobs: list[Job], rows: str | None = None, cols: str | None = None) -> str:
    """The image grid as an HTML table (also usable in a notebook with IPython.display.HTML)."""
    return str(_tables().grid(grid_model(jobs, rows, cols)))


def inputs_figures(jobs: list[Job]) -> list[dict[str, str]]:
    """The content and style image of each pair, once: (data URI, image key, pair)."""
    seen: dict[str, Job] = {}
    for job in jobs:
        if "content" in job.images:
            seen.setdefault(job.value("pair.name") or job.name, job)
    return [
        {"uri": uri, "key": key, "pair": pair}
        for pair, job in seen.items()
        for key in job.images
        if key != "final" and (uri := data_uri(job.images[key]))
    ]


def inputs_html(jobs: list[Job]) -> str:
    """The content and style image of each pair, once."""
    return str(_tables().inputs(inputs_figures(jobs)))


def step_path_label(summary: dict[str, Any]) -> str:
    """How a run's steps ran: `cuda_graph`, `eager (why)`, or nothing (runs from before)."""
    path, reason = summary.get("step_path"), summary.get("step_path_reason")
    return f"{path} ({reason})" if path and reason else str(path or "")


def table_model(jobs: list[Job], keys: list[str]) -> dict[str, Any]:
    """The runs table: its header and, per job, (text, sort key or None) cells and its error."""
    from stylelab.layer_losses import KINDS, unweighted_total

    columns = list(dict.fromkeys([*keys, *COLUMNS]))
    finals = [*eval_keys(jobs), *final_keys(jobs)]
    unweighted = [kind for kind in KINDS if any(unweighted_total(job, kind) for job in jobs)]
    head = [
        "job",
        "status",
        *columns,
        *finals,
        *(f"{k} (unweighted)" for k in unweighted),
        "step path",
        "error",
    ]
    rows = []
    for job in jobs:
        cells: list[tuple[str, str | None]] = [(job.name, job.name), (job.status, None)]
        cells += [(label(v), v or "") for v in (job.value(key) for key in columns)]
        numbers = [as_float(job.summary.get(key)) for key in finals]
        numbers += [unweighted_total(job, kind) for kind in unweighted]
        cells += [(f"{n:.4g}", str(n)) if n is not None else ("", "") for n in numbers]
        cells.append((step_path_label(job.summary), None))
        failed_eval = job.summary.get("eval/error")
        error = job.error or (f"evaluation failed: {failed_eval}" if failed_eval else "")
        rows.append({"cells": cells, "error": error, "bad": job.status != Status.FINISHED})
    return {"head": head, "rows": rows}


def table_html(jobs: list[Job], keys: list[str]) -> str:
    """Hyperparameters and final losses, one row per job; a click on a header sorts by it."""
    return str(_tables().runs(table_model(jobs, keys)))


def _environment() -> Any:
    """The Jinja2 environment of stylelab/templates, autoescaping."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
        autoescape=True,
    )


def _tables() -> Any:
    """The macros of tables.html.j2 (grid, inputs, runs)."""
    return _environment().get_template("tables.html.j2").module


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}
.grid img{width:320px;display:block;cursor:zoom-in}.grid img.big{width:auto;max-width:none}
img.losses{max-width:100%}.inputs img{max-height:160px;display:block}
figure{margin:2px;display:inline-block;vertical-align:top}figcaption{font-size:12px;max-width:320px}
.failed{width:200px;min-height:80px;background:#fee;padding:6px;font-size:12px}
.failed,.error,figcaption{overflow-wrap:anywhere}
.runs{font-size:13px}.runs th{cursor:pointer;background:#eee}.runs th[data-order=asc]::after{content:" \\25B2"}
.runs th[data-order=desc]::after{content:" \\25BC"}tr.bad{background:#fee}.error{max-width:30em}"""

SORT_SCRIPT = """document.querySelectorAll(".grid img").forEach(img => img.addEventListener("click", () => img.classList.toggle("big")));
document.querySelectorAll("table.sortable th").forEach((th, i) => th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0], asc = th.dataset.order !== "asc";
  table.querySelectorAll("th").forEach(h => delete h.dataset.order);
  th.dataset.order = asc ? "asc" : "desc";
  const key = row => { const c = row.cells[i], v = c.dataset.sort ?? c.textContent, n = Number(v);
    return v === "" ? null : (isNaN(n) ? v : n); };
  const cmp = (a, b) => a === null ? 1 : b === null ? -1 : (typeof a === typeof b ?
    (a < b ? -1 : a > b ? 1 : 0) : (typeof a === "number" ? -1 : 1)) * (asc ? 1 : -1);
  [...body.rows].sort((a, b) => cmp(key(a), key(b))).forEach(row => body.appendChild(row));
}));"""


def sweep_name(sweep: Path, sweeps: list[Path]) -> str:
    """A sweep's short name: its path below the sweeps' common folder."""
    if len(sweeps) == 1:
        return sweep.name
    common = Path(os.path.commonpath([path.resolve() for path in sweeps]))
    return sweep.resolve().relative_to(common).as_posix() or sweep.name


def expand_sweeps(paths: Iterable[str | Path]) -> list[Path]:
    """Each path as one sweep, or, for a folder holding sweeps, every sweep in it (by name)."""
    sweeps: list[Path] = []
    for path in (Path(p).expanduser() for p in paths):
        inside = sorted(find_sweeps(path)) if path.is_dir() and not job_folders(path) else []
        sweeps += inside or [path]
    return list(dict.fromkeys(sweeps))


def load_sweeps(paths: Iterable[str | Path]) -> tuple[list[Job], list[Path]]:
    """The jobs of several sweeps (or of the sweeps in a parent folder) and the sweeps; with
    more than one, each job's name and its `sweep` key (a grid axis) say which sweep it is from."""
    sweeps = expand_sweeps(paths)
    if len(sweeps) == 1:
        return load_jobs(sweeps[0]), sweeps
    jobs = []
    for sweep in sweeps:
        name = sweep_name(sweep, sweeps)
        for job in load_jobs(sweep):
            job.name = f"{name}/{job.name}"
            job.overrides = {"sweep": name, **job.overrides}
            jobs.append(job)
    return jobs, sweeps


def pareto_rows(jobs: list[Job], keys: list[str]) -> list[dict[str, Any]]:
    from stylelab.tradeoff import pareto_jobs, tradeoff_point

    rows = []
    for job in pareto_jobs(jobs):
        content, style = tradeoff_point(job)
        values = [label(job.value(key)) for key in keys]
        rows.append(
            {
                "job": job.name,
                "settings": values,
                "content": f"{content:.4g}",
                "style": f"{style:.4g}",
            }
        )
    return rows


def render(
    jobs: list[Job],
    title: str,
    rows: str | None = None,
    cols: str | None = None,
    color_by: str | None = None,
    label_by: str | None = None,
    sweeps: Iterable[str] = (),
) -> str:
    """The whole page as a string (stylelab/templates/report.html.j2, autoescaped)."""
    from markupsafe import Markup

    from stylelab.layer_losses import layer_figure
    from stylelab.seeds import seed_rows, seed_swept
    from stylelab.tradeoff import missing_reason, tradeoff_figure

    row_key, col_key, captions = choose_axes(jobs, rows, cols)
    keys = [key for key in (row_key, col_key, *captions) if key]
    color_by, label_by = plot_keys(jobs, keys, color_by, label_by)
    losses = (
        loss_figure(jobs, color_by=color_by, style_by=label_by)
        if any(j.losses for j in jobs)
        else None
    )
    tradeoff = tradeoff_figure(jobs, color_by, label_by, keys)
    layers = layer_figure(jobs, color_by, label_by)
    seeds = None
    if seed_swept(jobs, keys):
        metrics = [*eval_keys(jobs), "final/total"]
        setting = [key for key in keys if key != "seed"]
        seeds = {"columns": setting, "metrics": metrics, "rows": seed_rows(jobs, keys, metrics)}
    environment = _environment()
    protocols = sorted(
        {str(j.summary["eval/protocol"]) for j in jobs if j.summary.get("eval/protocol")}
    )
    return environment.get_template("report.html.j2").render(
        title=title,
        style=Markup(STYLE),
        script=Markup(SORT_SCRIPT),
        jobs=jobs,
        finished=sum(job.status == Status.FINISHED for job in jobs),
        sweeps=list(sweeps),
        keys=keys,
        protocols=protocols,
        stamp=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        grid=grid_model(jobs, row_key, col_key),
        inputs=inputs_figures(jobs),
        color_by=color_by,
        label_by=label_by,
        tradeoff=figure_uri(tradeoff) if tradeoff is not None else None,
        tradeoff_missing=missing_reason(jobs),
        pareto=pareto_rows(jobs, keys),
        seeds=seeds,
        losses=figure_uri(losses) if losses is not None else None,
        layers=figure_uri(layers) if layers is not None else None,
        table=table_model(jobs, keys),
    )


def write_report(
    sweep: str | Path | Iterable[str | Path],
    out: str | Path | None = None,
    rows: str | None = None,
    cols: str | None = None,
    title: str | None = None,
    color_by: str | None = None,
    label_by: str | None = None,
) -> Path:
    """Write the report of the multirun folder `sweep`, or of several sweeps (or a folder holding
    sweeps) in one page; by default `<sweep>/report.html` (several: in their common folder)."""
    paths = [sweep] if isinstance(sweep, str | Path) else list(sweep)
    jobs, sweeps = load_sweeps(paths)
    if out:
        out_path = Path(out).expanduser()
    elif len(sweeps) == 1:
        out_path = sweeps[0] / "report.html"
    else:
        out_path = Path(os.path.commonpath([p.resolve() for p in sweeps])) / "report.html"
    names = [sweep_name(path, sweeps) for path in sweeps]
    default_title = f"stylelab sweep {Path(paths[0])}" if len(sweeps) == 1 else "stylelab sweeps"
    page = render(jobs, title or default_title, rows, cols, color_by, label_by, names)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ReportError(f"cannot write {out_path}: {error.strerror or error}") from None
    return out_path


def main(argv: list[str] | None = None) -> int:
    """`stylelab-report` / `python -m stylelab.report`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="stylelab-report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep",
        nargs="+",
        help="multirun folders (multirun/<date>/<time>), run folders, or folders holding sweeps",
    )
    parser.add_argument(
        "--out",
        help="the HTML file to write (default: <sweep>/report.html; several sweeps: "
        "report.html in their common folder)",
    )
    parser.add_argument(
        "--rows", help="the key whose values make the grid's rows (default: the first swept key)"
    )
    parser.add_argument(
        "--cols", help="the key whose values make the grid's columns (default: the second)"
    )
    parser.add_argument(
        "--color-by",
        help="the key that colours the trade-off plot and the loss curves (default: --cols')",
    )
    parser.add_argument(
        "--label-by",
        help="the key that labels the trade-off plot's points and sets the loss curves' line "
        "style (default: --rows')",
    )
    parser.add_argument("--title", help="the page title")
    args = parser.parse_args(argv)
    try:
        out = write_report(
            args.sweep, args.out, args.rows, args.cols, args.title, args.color_by, args.label_by
        )
    except ReportError as error:
        print(f"stylelab-report: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
