"""Cheap job start-up and launchers without globals (issues 27 and 31).

Jobs of one launch share a `factory.Shared` (each input decoded once, each VGG loaded once), a
job's config is validated once, and a launcher passes its progress display and sharing to the
jobs (`runner.Launch`) instead of flipping module globals.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import stylelab.factory as factory
from hydra_plugins.stylelab_launchers import batch_jobs
from hydra_plugins.stylelab_launchers.packed_task import PackedTask
from hydra_plugins.stylelab_launchers.submitit_launchers import LocalLauncher
from stylelab import preflight, runner
from stylelab.engine.batch import BatchJob
from stylelab.engine.observers import ProgressBar
from stylelab.tracking import BackgroundTracker, NullTracker, RunInfo
from tests.test_robustness import tiny_config

ROOT = Path(__file__).resolve().parent.parent
FAST = ["model.weights=random", "image_size=32", "steps=1", "logger=none", "eval.every=null"]


def counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[tuple]:
    """Calls of `owner.name` (still called through), as their positional arguments."""
    calls: list[tuple] = []
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_jobs_sharing_inputs_decode_them_and_load_the_vgg_once(monkeypatch) -> None:
    decoded = counting(monkeypatch, factory, "load_source")
    loaded = counting(monkeypatch, factory, "load_vgg19_features")
    resized = counting(monkeypatch, factory, "resize_long_side")
    shared = factory.Shared()
    first = factory.build_synthesis(tiny_config(), shared=shared)
    second = factory.build_synthesis(tiny_config(style_weight=1e3), shared=shared)
    assert [args[0] for args in decoded] == ["skimage:astronaut", "skimage:coffee"]
    assert len(loaded) == 1 and first.vgg is second.vgg
    size = first.synthesis.stages[-1].size
    assert not resized  # building checks sizes without resizing; the jobs resize when they run
    for built in (first, second):
        built.images(size)
    assert len(resized) == 2  # content and style, once each for both jobs
    assert first.images.sources.content is second.images.sources.content
    alone = factory.build_synthesis(tiny_config())  # no `Shared`: its own of everything
    assert len(decoded) == 4 and len(loaded) == 2 and alone.vgg is not first.vgg


def test_sharing_vgg_still_shares_within_its_block(monkeypatch) -> None:
    loaded = counting(monkeypatch, factory, "load_vgg19_features")
    with factory.sharing_vgg() as shared:
        built = [factory.build_synthesis(tiny_config()) for _ in range(2)]
    assert len(loaded) == 1 and built[0].vgg is built[1].vgg is shared.vgg(tiny_config())
    factory.build_synthesis(tiny_config())
    assert len(loaded) == 2  # outside the block: not shared


def run_command(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> None:
    """`python -m stylelab.run overrides...` in this process (so that calls can be counted)."""
    import stylelab.run

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["stylelab.run", *overrides])
    try:
        stylelab.run.main()
    except SystemExit as exit:
        assert not exit.code, exit.code
    finally:
        GlobalHydra.instance().clear()


def test_a_job_validates_its_config_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    by_preflight = counting(monkeypatch, preflight, "validate")
    by_runner = counting(monkeypatch, runner, "validate")
    run_command(monkeypatch, *FAST, f"hydra.run.dir={tmp_path / 'run'}")
    assert (tmp_path / "run" / "final.png").is_file()
    assert len(by_preflight) + len(by_runner) == 1


def module_state(*modules: Any) -> dict[str, Any]:
    """The plain-valued globals of `modules` (flags, counters, names, caches)."""
    plain = (bool, int, float, str, type(None), dict, list)
    return {
        f"{module.__name__}.{key}": repr(value)
        for module in modules
        for key, value in vars(module).items()
        if isinstance(value, plain) and not key.startswith("__")
    }


def test_a_batched_launch_composes_once_passes_its_settings_and_flips_no_global(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = module_state(runner, factory)
    seen: list[tuple[Any, dict, Any]] = []
    build = runner.build_synthesis

    def spy(cfg: Any, sources: Any = None, shared: Any = None) -> Any:
        seen.append((shared, module_state(runner, factory), factory._ambient.get()))
        return build(cfg, sources, shared)

    monkeypatch.setattr(runner, "build_synthesis", spy)
    bars = counting(monkeypatch, ProgressBar, "__init__")
    composed = counting(monkeypatch, ConfigLoaderImpl, "load_sweep_config")
    sweep = ["hydra/launcher=batched", "style_weight=1e3,1e4", f"hydra.sweep.dir={tmp_path}/s"]
    run_command(monkeypatch, "-m", *FAST, *sweep)
    assert all((tmp_path / f"s/{num}/final.png").is_file() for num in (0, 1))
    (shared, during, ambient), (other, _, _) = seen
    assert isinstance(shared, factory.Shared) and other is shared  # passed, one per launch
    assert ambient is None and during == before == module_state(runner, factory)
    assert len(bars) == 1  # one bar for the batch, none per job
    assert len(composed) == 2  # each job's config once (the sweeper's check, kept)


class FakeHalves:
    """Jobs whose batch key is their config (an int); `open` ends job 3 in its set-up."""

    def open(self, config: int) -> batch_jobs.Job:
        job = batch_jobs.Job(config, OmegaConf.create(), None)  # type: ignore[arg-type]
        if config != 3:
            job.request = BatchJob(synthesis=None, key=config % 2)  # type: ignore[arg-type]
        return job


def test_the_batcher_groups_runs_full_groups_and_closes_the_rest() -> None:
    ran: list[tuple[Any, list[int]]] = []
    closed: list[int] = []
    started: list[int] = []
    run = lambda place, batch: ran.append((place, [job.num for job in batch]))  # noqa: E731
    batcher = batch_jobs.Batcher(
        FakeHalves(), run, lambda job: closed.append(job.num), 2, started.append
    )  # type: ignore[arg-type]
    for num in range(6):
        batcher.open(num, place="cpu")  # type: ignore[arg-type]
    assert ran == [("cpu", [0, 2]), ("cpu", [1, 5])] and closed == [3]
    assert started == list(range(6))
    batcher.open(7, place="cuda")  # type: ignore[arg-type]
    batcher.finish(received=[15])  # a stop signal: the groups not full do not start
    assert ran == [("cpu", [0, 2]), ("cpu", [1, 5])] and closed == [3, 4, 7]
    batcher.open(9, place="cuda")  # type: ignore[arg-type]
    batcher.finish(received=[])
    assert ran[-1] == ("cuda", [9])


class FakeExecutor:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def map_array(self, fn: Any, *iterables: list) -> list:
        self.calls.append((fn, iterables))
        return [SimpleNamespace(job_id=str(i)) for i in range(len(iterables[0]))]


@pytest.mark.parametrize("per_task", [1, 2])
def test_submitit_jobs_are_submitted_without_patching_the_executor(per_task: int) -> None:
    launcher = LocalLauncher.__new__(LocalLauncher)
    launcher.jobs_per_task = per_task
    executor = FakeExecutor()
    members = [(["seed=0"], 0), (["seed=1"], 1), (["seed=2"], 2)]
    jobs = launcher.submit(executor, members)
    ((fn, iterables),) = executor.calls
    assert (jobs[0].task.members, jobs[0].index) == (
        [members[0]] if per_task == 1 else members[:2],
        0,
    )
    if per_task == 1:
        assert fn is launcher and list(iterables[0]) == [["seed=0"], ["seed=1"], ["seed=2"]]
        assert list(iterables[2]) == [0, 1, 2]
    else:
        assert type(fn).__name__ == PackedTask.__name__  # (the plugin scan reloads the module)
        assert list(iterables[0]) == [members[:2], members[2:]]
    assert len(jobs) == 3


def test_no_production_module_uses_unittest_mock() -> None:
    for folder in ("stylelab", "hydra_plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            assert "unittest" not in path.read_text(), path


class SlowStart(NullTracker):
    """A tracker whose start waits for `go` (as wandb.init does for its service)."""

    starts_in_background = True

    def __init__(self) -> None:
        self.go = threading.Event()
        self.calls: list[str] = []

    def start(self, info: RunInfo) -> None:
        self.go.wait(timeout=30)
        self.calls.append("start")
        self.run_id = "run-1"

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.calls.append(f"metrics {step}")


def test_a_tracker_that_may_start_in_the_background_does_not_block_the_job(tmp_path) -> None:
    inner = SlowStart()
    tracker = BackgroundTracker(inner)
    tracker.start_soon(RunInfo({}, tmp_path, "job"))  # returns before the inner start ended
    tracker.log_metrics(0, {"loss": 1.0})
    assert inner.calls == []
    inner.go.set()
    assert tracker.run_id == "run-1"  # waits for the start
    tracker.finish(0, {})
    assert inner.calls == ["start", "metrics 0"]
    plain = SlowStart()
    threading.Timer(0.2, plain.go.set).start()
    BackgroundTracker(plain).start(RunInfo({}, tmp_path, "job"))  # a run on its own: waits
    assert plain.calls == ["start"]
    online = SlowStart()
    online.starts_in_background = False  # e.g. W&B online: its start must see Ctrl-C
    online.go.set()
    BackgroundTracker(online).start_soon(RunInfo({}, tmp_path, "job"))
    assert online.calls == ["start"]
