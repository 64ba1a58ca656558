"""The W&B tracker's mode choice and its fall-back when W&B cannot be reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from stylelab.errors import StyleLabError
from stylelab.tracking import NullTracker, RunInfo, make_tracker
from stylelab.tracking import wandb_tracker as wt


@pytest.fixture
def no_key(monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    return netrc


def test_auto_is_offline_without_a_key(no_key: Path) -> None:
    assert wt.resolve_mode("auto") == "offline"


def test_auto_is_online_with_a_key_in_the_environment(no_key: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wt.resolve_mode("auto") == "online"


def test_auto_is_online_with_a_key_in_netrc(no_key: Path) -> None:
    no_key.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    no_key.chmod(0o600)
    assert wt.resolve_mode("auto") == "online"


@pytest.mark.parametrize("env", ["offline", "disabled", "online"])
def test_auto_honours_wandb_mode(no_key: Path, monkeypatch, env: str) -> None:
    monkeypatch.setenv("WANDB_MODE", env)
    assert wt.resolve_mode("auto") == env


def test_explicit_mode_wins_and_unknown_mode_fails(no_key: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wt.resolve_mode("disabled") == "disabled"
    with pytest.raises(StyleLabError, match=r"logger\.mode=sometimes: use one of auto, online"):
        wt.resolve_mode("sometimes")


def test_unreachable_wandb_falls_back_to_offline(no_key: Path, monkeypatch, tmp_path: Path) -> None:
    import wandb

    modes: list[str] = []
    real_init = wandb.init

    def flaky_init(*args, mode=None, **kwargs):
        modes.append(mode)
        if mode == "online":
            raise wandb.errors.CommError("could not reach api.wandb.ai")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", flaky_init)
    tracker = wt.WandbTracker(mode="online")
    tracker.start(RunInfo(config={"a": 1}, run_dir=tmp_path, name="fallback"))
    try:
        assert tracker.mode == "offline" and tracker.run_id
        tracker.log_metrics(0, {"total": 1.0})
    finally:
        tracker.finish(0, {"status": "finished"})
    assert modes == ["online", "offline"]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_make_tracker() -> None:
    assert isinstance(make_tracker("none"), NullTracker)
    with pytest.raises(StyleLabError, match=r"logger\.name=tensorboard: use wandb or none"):
        make_tracker("tensorboard")
