"""Shared benchmark pieces: the images, timing, and both contenders on one objective.

The objective is the write-up's approach 1 (style conv1_1, conv2_1, conv3_1, conv4_1, conv5_1;
content conv4_4), style weight 1e6, content weight 1, no TV, random VGG-19 weights (speed does
not depend on weight values), starting from the content image.
"""

from __future__ import annotations

import copy
import json
import platform
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from benchmarks import baseline
from stylelab.config import Config, LayersConfig, PairConfig
from stylelab.engine.features import IMAGENET_MEAN, IMAGENET_STD, load_vgg19_features
from stylelab.engine.loop import LossBuffer
from stylelab.engine.synthesis import Synthesizer, default_precision
from stylelab.factory import SourceImages, build_synthesis

STYLE_LAYERS, CONTENT_LAYERS = [0, 5, 10, 19, 28], [25]
FLUSH_EVERY = 10  # the runner's default log.flush_every


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor as /proc/cpuinfo names it, with its family and model (a VM may call two
    generations by one name, and they round convolutions differently), else the platform's."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def environment(device: str) -> dict[str, Any]:
    """What a result was measured on: versions, and the GPU or the CPU and its threads."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": device}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    else:
        env.update(cpu=cpu_name(), threads=torch.get_num_threads())
    return env


def print_result(result: dict[str, Any], out: Path | None = None, indent: int = 1) -> None:
    """Print a benchmark's result as JSON on stdout, and write it to `out` when given."""
    text = json.dumps(result, indent=indent)
    print(text)
    if out:
        out.write_text(text + "\n")


def square_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """skimage's astronaut (content) and coffee (style), or seeded noise without skimage."""
    from PIL import Image

    try:
        from skimage import data

        pictures = [data.astronaut(), data.coffee()]
    except Exception:  # no scikit-image or its data: synthetic images do for timing
        rng = np.random.default_rng(0)
        pictures = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2)]
    out = []
    for picture in pictures:
        side = min(picture.shape[:2])
        top, left = (picture.shape[0] - side) // 2, (picture.shape[1] - side) // 2
        crop = Image.fromarray(picture[top : top + side, left : left + side])
        out.append(np.asarray(crop.resize((size, size), Image.BICUBIC)))
    return out[0], out[1]


@dataclass
class Problem:
    device: torch.device
    content: torch.Tensor  # (1, 3, S, S) in [0, 1], on the device
    style: torch.Tensor
    features: nn.Sequential  # VGG-19 `features` with random weights, on the CPU
    pictures: tuple[np.ndarray, np.ndarray]  # content and style, uint8 (S, S, 3)

    @classmethod
    def make(cls, device: str, size: int) -> Problem:
        pictures = square_images(size)
        content, style = (
            torch.from_numpy(np.array(a))
            .permute(2, 0, 1)[None]
            .float()
            .div(255)
            .contiguous()
            .to(device)
            for a in pictures
        )
        features = load_vgg19_features("random", seed=0)
        return cls(torch.device(device), content, style, features, pictures)

    @property
    def size(self) -> int:
        return int(self.content.shape[-1])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def backend_flags(runner: bool) -> Iterator[None]:
    """The runner's CUDA settings (cudnn.benchmark, TF32) or PyTorch's defaults, restored after."""
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.backends.cudnn.benchmark = runner
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = runner
    try:
        yield
    finally:
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        ) = saved


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated GPU memory since the last reset; on the CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(device: torch.device, setup: Callable[[], Any], loop: Callable[[Any], dict]) -> dict:
    """Run `setup()`, then `loop(state)`, timing each (device synchronised) and the peak memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    started = time.perf_counter()
    state = setup()
    sync(device)
    built = time.perf_counter()
    result = loop(state)
    sync(device)
    seconds = time.perf_counter() - built
    result.update(
        seconds=round(seconds, 4),
        ms_per_eval=round(1000 * seconds / result["evals"], 3),
        setup_seconds=round(built - started, 4),
        peak_memory_mib=round(peak_memory_mib(device), 1),
    )
    return result


def run_baseline(problem: Problem, evals: int, freeze: bool = False) -> dict:
    """The tutorial-style baseline with PyTorch's default backend settings (see baseline.py)."""
    style_names, content_names = baseline.tutorial_layer_names(STYLE_LAYERS, CONTENT_LAYERS)

    def setup() -> nn.Sequential:
        return copy.deepcopy(problem.features).to(problem.device).eval()

    def loop(cnn: nn.Sequential) -> dict:  # builds model and targets first, like the tutorial
        image = problem.content.clone()
        mean = torch.tensor(IMAGENET_MEAN).to(problem.device)
        std = torch.tensor(IMAGENET_STD).to(problem.device)
        _, count, history = baseline.run_style_transfer(
            cnn, mean, std, problem.content, problem.style, image,
            num_evals=evals, content_layers=content_names, style_layers=style_names, freeze=freeze,
        )  # fmt: skip
        return {"evals": count, "first_loss": sum(history[0]), "final_loss": sum(history[-1]),
                "vgg_weights_frozen": freeze}  # fmt: skip

    with backend_flags(runner=False):
        return timed(problem.device, setup, loop)


def engine_precision(device: torch.device, precision: str = "auto") -> str:
    """precision=auto as `stylelab.engine.synthesis.default_precision` decides it."""
    return default_precision(device) if precision == "auto" else precision


def engine_config(problem: Problem, optimizer: str = "lbfgs", precision: str = "auto") -> Config:
    """The benchmark's objective as a run's `Config` (approach1, style weight 1e6, no TV)."""
    cfg = Config(
        pair=PairConfig(name="bench", content="bench:content", style="bench:style"),
        layers=LayersConfig(name="approach1", style=STYLE_LAYERS, content=CONTENT_LAYERS),
        image_size=problem.size, device=str(problem.device), precision=precision,
        content_weight=1.0, style_weight=1e6, tv_weight=0.0, init="content",
    )  # fmt: skip
    cfg.model.weights = "random"
    cfg.optim.name, cfg.optim.lr = optimizer, 1.0 if optimizer == "lbfgs" else 0.02
    return cfg


def build_engine(
    problem: Problem, optimizer: str = "lbfgs", precision: str = "auto", **options
) -> Synthesizer:
    """The first stage's Synthesizer, built by stylelab's factory exactly as a run builds it.

    `options`: `history_size`, and `cuda_graph` / `history_dtype` (the engine's own switches).
    """
    cfg = engine_config(problem, optimizer, precision)
    cfg.optim.history_size = options.pop("history_size", 100)
    if "history_dtype" in options:  # an L-BFGS option the config keeps under optim.options
        cfg.optim.options["history_dtype"] = options.pop("history_dtype")
    content, style = (Image.fromarray(picture) for picture in problem.pictures)
    sources = SourceImages(content, [style])
    synthesis = build_synthesis(cfg, sources).synthesis
    for key, value in options.items():
        setattr(synthesis.optim, key, value)
    return synthesis.enter_stage(0)


def run_engine(problem: Problem, evals: int, optimizer: str = "lbfgs", **options) -> dict:
    """stylelab's engine, reading the losses back every FLUSH_EVERY steps like the runner."""

    def loop(synth: Synthesizer) -> dict:
        buffer, rows, half = LossBuffer(), [], evals // 2
        for step in range(evals):
            if step == half:
                sync(problem.device)
                halfway = time.perf_counter()
            buffer.add(step, synth.step())
            if (step + 1) % FLUSH_EVERY == 0 or step + 1 == evals:
                rows += buffer.flush()
        sync(problem.device)
        steady_ms = 1000 * (time.perf_counter() - halfway) / (evals - half)
        graph = synth.graph is not None and synth.graph.captured
        history = getattr(synth.optimizer, "history", None)
        return {
            "evals": evals, "first_loss": rows[0]["total"], "final_loss": rows[-1]["total"],
            "steady_ms_per_eval": round(steady_ms, 3),
            "precision": synth.precision, "cuda_graph": graph,
            "capture_seconds": round(synth.graph.capture_seconds, 4) if graph else None,
            "history_dtype": None if history is None else str(history.dtype).removeprefix("torch."),
        }  # fmt: skip

    with backend_flags(runner=True):
        result = timed(problem.device, lambda: build_engine(problem, optimizer, **options), loop)
    result.update(optimizer=optimizer, options=options)
    return result
