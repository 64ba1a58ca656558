"""Bad input, interruptions and failures: one clear line, the right exit code, nothing lost."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylelab import runner
from stylelab.config import Config, LayersConfig, PairConfig
from stylelab.engine.loop import LoopSettings, frame_interval
from stylelab.engine.synthesis import Synthesizer
from stylelab.errors import DivergenceError, StyleLabError
from stylelab.tracking import NullTracker, RunInfo
from tests.cli_fork import ForkedProcess
from tests.conftest import (
    FAST,
    ROOT,
    leet_records,
    only_run_dir,
    records_of,
    run_cli,
    start_stylelab,
    wandb_summary,
)

pytestmark = pytest.mark.slow


def assert_one_clear_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    good = root / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        good
    )
    (root / "empty.png").write_bytes(b"")
    (root / "notes.png").write_text("not an image at all")
    (root / "half.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "folder.png").mkdir()
    return {"good": good, **{p.stem: p for p in root.iterdir()}}


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing", ["image not found"]),
        ("folder", ["is a folder"]),
        ("empty", ["is empty"]),
        ("notes", ["not an image"]),
        ("half", ["truncated or corrupt"]),
    ],
)
def test_bad_image_files_end_in_one_line(bad_files, tmp_path: Path, case: str, fragments) -> None:
    path = bad_files.get(case, bad_files["good"].parent / "missing.png")
    result = run_cli(*FAST, f"pair.content={path}", cwd=tmp_path)
    assert_one_clear_line(result, str(path), *fragments)
    run_dir = only_run_dir(tmp_path)
    assert (
        not (run_dir / "final.png").exists() and not (run_dir / "frames").exists()
    )  # nothing half-written


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["image_size=8"], ["too small", "at least 16 px"]),
        (["layers.style=[conv9_9]"], ["unknown VGG-19 layer 'conv9_9'", "relu4_2"]),
        (["layers.content=[99]"], ["unknown VGG-19 layer '99'"]),
        (["style_weight=-1"], ["style_weight=-1.0: must be >= 0"]),
        (["steps=0"], ["steps=0: must be at least 1"]),
        (["device=tpu"], ["device"]),
        (["device=cuda"], ["CUDA is not available"]),
        (["pair.style=http://127.0.0.1:9/nothing.png"], ["could not download"]),
    ],
)
def test_bad_settings_end_in_one_line(tmp_path: Path, overrides: list[str], fragments) -> None:
    result = run_cli(*FAST, "steps=2", *overrides, cwd=tmp_path)
    assert_one_clear_line(result, *fragments)


def test_checksum_mismatch_discards_the_download(tmp_path: Path, bad_files) -> None:
    payload = bad_files["good"].read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/style.png#sha256={'0' * 64}"
        cache = tmp_path / "cache"
        result = run_cli(*FAST, f"pair.style='{url}'", f"cache_dir={cache}", cwd=tmp_path)
    finally:
        server.shutdown()
    assert_one_clear_line(result, "checksum mismatch", "discarded")
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_huge_image_in_a_non_ascii_path_with_spaces_just_works(tmp_path: Path) -> None:
    folder = tmp_path / "mes images ü"
    folder.mkdir()
    huge = folder / "très grande photo.png"
    Image.new("RGB", (6000, 4000), (90, 140, 200)).save(huge, compress_level=1)
    cmyk = folder / "style cmyk.jpg"
    Image.new("CMYK", (80, 60), (10, 200, 30, 0)).save(cmyk)
    result = run_cli(
        *FAST, "steps=2", f"pair.content='{huge}'", f"pair.style='{cmyk}'", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "downscaling 6000x4000 to 32x21" in result.stderr
    assert "estimated memory" in result.stderr


def test_inf_loss_stops_naming_the_step_and_marks_the_run_failed(tmp_path: Path) -> None:
    result = run_cli(
        "model.weights=random", "image_size=32", "steps=5", "style_weight=1e39", cwd=tmp_path
    )
    assert_one_clear_line(result, "the loss became inf at step 0", "last finite image")
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / "final.png").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    report = wandb_summary(run_dir)
    assert report["exit_code"] == 1 and report["state"] == "failed"


def tiny_config(**overrides) -> Config:
    cfg = Config(
        pair=PairConfig(name="t", content="skimage:astronaut", style="skimage:coffee"),
        layers=LayersConfig(name="t", style=[0, 5], content=[7]),
        image_size=32,
        steps=12,
        device="cpu",
    )
    cfg.model.weights = "random"
    cfg.log.flush_every = 2
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_nan_mid_run_keeps_the_last_finite_image(tmp_path: Path, monkeypatch) -> None:
    real_step = Synthesizer.step

    def step_then_nan(self):
        terms = real_step(self)
        if self.step_count > 5:
            self.image.fill_(float("nan"))
            return {key: value * float("nan") for key, value in terms.items()}
        return terms

    monkeypatch.setattr(Synthesizer, "step", step_then_nan)
    with pytest.raises(DivergenceError, match="at step 5"):
        runner.run_synthesis(tiny_config(), tmp_path, NullTracker(), RunInfo({}, tmp_path, "nan"))
    final = np.asarray(Image.open(tmp_path / "final.png"))
    assert final.mean() > 0  # the finite image from before step 5, not the NaN one
    rows = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]


def test_out_of_memory_says_what_to_change(tmp_path: Path, monkeypatch) -> None:
    def no_memory(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Synthesizer, "step", no_memory)
    with pytest.raises(
        StyleLabError, match=r"out of memory .* image_size=32 .*GiB.*lower image_size"
    ):
        runner.run_synthesis(tiny_config(), tmp_path, NullTracker(), RunInfo({}, tmp_path, "oom"))


def start_long_run(cwd: Path) -> tuple[subprocess.Popen | ForkedProcess, Path]:
    args = [
        "model.weights=random",
        "image_size=32",
        "steps=100000",
        "log.flush_every=1",
        "log.image_every=1000",
    ]
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
    }
    process = start_stylelab(args, cwd, env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        losses = list(cwd.glob("outputs/*/*/losses.jsonl"))
        if losses and len(losses[0].read_text().splitlines()) >= 3:
            return process, losses[0].parent
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the run did not start logging within 120 s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_everything_and_resume_continues_the_same_run(tmp_path: Path, signum) -> None:
    process, run_dir = start_long_run(tmp_path)
    process.send_signal(signum)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - sent < 10, "took too long to stop"
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and f"resume={run_dir}" in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert (run_dir / "final.png").is_file() and (run_dir / "checkpoint.pt").is_file()
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    stopped_at = checkpoint["synthesis"]["step"]
    rows = [
        json.loads(line)["step"] for line in (run_dir / "losses.jsonl").read_text().splitlines()
    ]
    assert rows == list(range(stopped_at))
    first = wandb_summary(run_dir)
    assert first["exit_code"] == 128 + signum
    if signum != signal.SIGTERM:
        return
    # Resume: same folder, same W&B run id, no repeated or missing steps.
    total = stopped_at + 4
    result = run_cli(f"resume={run_dir}", f"steps={total}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [
        json.loads(line)["step"] for line in (run_dir / "losses.jsonl").read_text().splitlines()
    ]
    assert rows == list(range(total))
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and runs[0].name[-8:] == runs[1].name[-8:]  # one W&B run, two sessions
    steps = []
    for run in runs:
        records = leet_records(run)
        steps += [
            h["item"]["step"] for h in records_of(records, "history") if "loss/total" in h["item"]
        ]
    assert steps == list(range(total))


def test_multirun_with_one_failing_job_finishes_the_others(tmp_path: Path) -> None:
    result = run_cli(
        *FAST,
        "steps=2",
        "pair.content=skimage:coffee,/no/such/photo.png,skimage:rocket",
        cwd=tmp_path,
        multirun=True,
    )
    assert result.returncode == 1
    statuses = sorted(
        json.loads(p.read_text())["status"] for p in tmp_path.glob("multirun/*/*/*/summary.json")
    )
    assert statuses == ["failed", "finished", "finished"]
    assert "2 of 3 jobs succeeded" in result.stderr
    assert "job 1: failed: image not found: /no/such/photo.png" in result.stderr


def test_debug_switch_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli(*FAST, "steps=2", "device=tpu", "debug=true", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_root_is_the_repository() -> None:
    assert (ROOT / "conf" / "config.yaml").is_file()


def test_short_runs_get_a_frame_per_step_by_default(tmp_path: Path) -> None:
    """Issue 26: log.image_every defaults to about 30 frames per run (it was 25 steps, so the
    README's 20-step runs had a GIF of 2 frames); an explicit value still wins."""
    assert [frame_interval(n) for n in (1, 20, 30, 31, 300, 1000)] == [1, 1, 1, 2, 10, 34]
    run_dir = tmp_path / "run"
    result = run_cli(*FAST, "steps=20", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((run_dir / "frames").glob("step_*.png"))) == 20
    with Image.open(run_dir / "synthesis.gif") as gif:
        assert gif.n_frames > 2  # (Pillow merges identical frames)
    assert Config().log.image_every is None and LoopSettings().image_every is None
