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
    "make_tracker",
]


def make_tracker(name: str, **options) -> Tracker:
    """`wandb` or `none`; raises `TrackerError` for a bad name or option."""
    if name == "none":
        return NullTracker()
    if name == "wandb":
        from stylelab.tracking.wandb_tracker import WandbTracker

        return BackgroundTracker(WandbTracker(**options))
    raise TrackerError(f"logger.name={name}: use wandb or none")
