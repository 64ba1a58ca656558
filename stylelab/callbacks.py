"""Hydra callbacks: a summary of every job at the end of a multirun."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from stylelab.outputs import SUMMARY_FILE

log = logging.getLogger("stylelab")


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
            summary = (
                json.loads(path.read_text())
                if path.exists()
                else {"status": "no summary (killed?)"}
            )
        except json.JSONDecodeError:
            summary = {"status": "unreadable summary"}
        results.append((job, summary))
    return results


class SweepSummary(Callback):
    """Logs one line per job when a multirun ends and names the jobs that did not finish."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = collect_summaries(sweep_dir)
        failed = [(job, s) for job, s in results if s.get("status") != "finished"]
        log.info(
            "multirun finished: %d of %d jobs succeeded (%s)",
            len(results) - len(failed),
            len(results),
            sweep_dir,
        )
        for job, summary in results:
            total = summary.get("final/total")
            detail = (
                f"final total {total:.4g}" if isinstance(total, float) else summary.get("error", "")
            )
            log.info("  job %s: %s %s", job.name, summary.get("status"), detail)
        for job, summary in failed:
            log.error(
                "job %s %s: %s",
                job.name,
                summary.get("status"),
                summary.get("error", "see its log"),
            )
