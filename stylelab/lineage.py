"""Lineage: the files a run read (by SHA-256) and the files its result and checkpoints hand on.

The digests go into summary.json (`inputs`) in every mode and into the tracker; the tracker
decides what becomes an artifact (`logger.artifacts`).
"""

from __future__ import annotations

from typing import Any

from stylelab.config import Config, mask_sources, style_sources
from stylelab.engine.loop import Observer
from stylelab.engine.masks import MASK_PREFIX
from stylelab.engine.sources import sha256_of, source_file
from stylelab.factory import numbered
from stylelab.outputs import RunFolder
from stylelab.run_folder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    FINAL_IMAGE,
    GIF_FILE,
    LOSSES_FILE,
    RUN_ID_FILE,
    SUMMARY_FILE,
    checkpoint_step,
)
from stylelab.tracking import InputFile, Tracker

RESULT_FILES = (FINAL_IMAGE, GIF_FILE, CONFIG_FILE, SUMMARY_FILE, LOSSES_FILE)
CHECKPOINT_FILES = (CHECKPOINT_FILE, CONFIG_FILE, LOSSES_FILE)  # what a resume needs
OPTIONAL_CHECKPOINT_FILES = (RUN_ID_FILE,)  # a run from before run ids has none
RESULT_METADATA = ("steps", "best_step", "kept", "stopped_early")  # with every final/* value


def input_files(cfg: Config) -> dict[str, InputFile]:
    """The files of the content, styles, masks and start image, by role (`content`, `style`,
    `style_2`, `mask`, `source_mask_2`, `init`); generated masks (`mask:left`) have none.
    Call after the run has loaded them (a URL's download is then in the cache)."""
    styles = style_sources(cfg)
    roles: dict[str, str | None] = {"content": cfg.pair.content}
    roles.update(zip(numbered("style", len(styles)), styles, strict=True))
    for name, masks in (
        ("mask", cfg.pair.style_masks),
        ("source_mask", cfg.pair.style_source_masks),
    ):
        items = mask_sources(masks) or []
        roles.update(zip(numbered(name, len(items)), items, strict=True))
    if cfg.init == "image":
        roles["init"] = cfg.init_image
    files = {}
    for role, source in roles.items():
        if source is None or source.startswith(MASK_PREFIX):
            continue
        path = source_file(source, cfg.cache_dir)
        files[role] = InputFile(source, path, sha256_of(path))
    return files


def digests(inputs: dict[str, InputFile]) -> dict[str, dict[str, str]]:
    """summary.json's `inputs`: {role: {source, sha256}}."""
    return {role: {"source": item.source, "sha256": item.sha256} for role, item in inputs.items()}


def log_result(tracker: Tracker, folder: RunFolder, summary: dict[str, Any], keep: str) -> None:
    """The finished run's files, its final metrics as metadata, `best` too where keep=best."""
    metadata = {k: v for k, v in summary.items() if k.startswith("final/") or k in RESULT_METADATA}
    aliases = ["latest", "best"] if keep == "best" else ["latest"]
    tracker.log_result([folder.root / name for name in RESULT_FILES], metadata, aliases)


class CheckpointLogger(Observer):
    """Hands each complete checkpoint to the tracker; after the run folder's recorder, so a
    checkpoint that failed to save (a full disk) is never handed on."""

    def __init__(self, tracker: Tracker, folder: RunFolder):
        self.tracker, self.folder = tracker, folder

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        files = [self.folder.root / name for name in CHECKPOINT_FILES]
        files += [
            path
            for path in (self.folder.root / name for name in OPTIONAL_CHECKPOINT_FILES)
            if path.is_file()
        ]
        self.tracker.log_checkpoint(files, checkpoint_step(state))
