"""Experiment tracking behind one small interface (`Tracker`); the engine never imports W&B."""

from stylelab.tracking.base import (
    BackgroundTracker,
    InputFile,
    NullTracker,
    RunInfo,
    Tracker,
    TrackerError,
)

__all__ = [
    "BackgroundTracker",
    "InputFile",
    "NullTracker",
    "RunInfo",
    "Tracker",
    "TrackerError",
    "check_settings",
    "make_tracker",
]

NAMES = ("wandb", "none")


def check_settings(name: str, options: dict, tags: list[str]) -> None:
    """The tracker `name`'s rules for its `options` (the logger config) and run `tags`, checked
    before a job starts; raises `TrackerError`."""
    if name not in NAMES:
        raise TrackerError(f"logger={name}: use {' or '.join(NAMES)}")
    if name == "wandb":
        from stylelab.tracking import wandb_tracker

        artifacts = options.get("artifacts", ("result",))
        wandb_tracker.check_settings(options["mode"], options["project"], artifacts, tags)


def make_tracker(name: str, **options) -> Tracker:
    """`wandb` or `none`; raises `TrackerError` for a bad name or option."""
    if name == "none":
        return NullTracker()
    if name == "wandb":
        from stylelab.tracking.wandb_tracker import WandbTracker

        return BackgroundTracker(WandbTracker(**options))
    raise TrackerError(f"logger.name={name}: use {' or '.join(NAMES)}")
