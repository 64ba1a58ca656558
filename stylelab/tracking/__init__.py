"""Experiment tracking behind one small interface (`Tracker`); the engine never imports W&B."""

from stylelab.tracking.base import BackgroundTracker, NullTracker, RunInfo, Tracker

__all__ = ["BackgroundTracker", "NullTracker", "RunInfo", "Tracker", "make_tracker"]


def make_tracker(name: str, **options) -> Tracker:
    """`wandb` or `none`."""
    if name == "none":
        return NullTracker()
    if name == "wandb":
        from stylelab.tracking.wandb_tracker import WandbTracker

        return BackgroundTracker(WandbTracker(**options))
    raise ValueError(f"unknown logger '{name}': use wandb or none")
