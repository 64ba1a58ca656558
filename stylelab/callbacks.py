"""Hydra callbacks: a summary of every job at the end of a multirun."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from stylelab.outputs import SUMMARY_FILE

log = logging.getLogger("stylelab")
# A job folder without summary.json: the run never got to write one (killed outright).
KILLED = {
    "status": "killed",
    "error": "no summary.json, the job ended without writing one (SIGKILL, out of memory, "
    "node failure or a time limit without requeue); see its run.log",
}


def collect_summaries(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(job folder, summary) for every job folder under a multirun folder, in job order."""
    jobs = (
        [path for path in sweep_dir.iterdir() if (path / ".hydra").is_dir()]
        if sweep_dir.is_dir()
        else []
    )
    jobs.sort(
        key=lambda path: (
            not path.name.isdigit(),
            int(path.name) if path.name.isdigit() else 0,
            path.name,
        )
    )
    results = []
    for job in jobs:
        path = job / SUMMARY_FILE
        try:
            summary = json.loads(path.read_text()) if path.exists() else dict(KILLED)
        except json.JSONDecodeError:
            summary = {"status": "unreadable summary"}
        results.append((job, summary))
    return results


class SweepSummary(Callback):
    """Logs one line per job when a multirun ends; exits non-zero if any job did not finish."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = collect_summaries(sweep_dir)
        failed = [job for job, summary in results if summary.get("status") != "finished"]
        succeeded = len(results) - len(failed)
        log.info(
            "multirun finished: %d of %d jobs succeeded (%s)", succeeded, len(results), sweep_dir
        )
        for job, summary in results:
            total = summary.get("final/total")
            if isinstance(total, float):
                log.info("  job %s: finished, final total %.4g", job.name, total)
            else:
                error = summary.get("error", "see its run.log")
                log.error("  job %s: %s: %s", job.name, summary.get("status"), error)
        if failed:
            sys.exit(1)  # the other jobs ran to the end; the sweep as a whole did not succeed
