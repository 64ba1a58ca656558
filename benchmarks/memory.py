"""Which image sizes fit in a GPU memory cap (default 16 GiB), for which optimiser settings."""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from typing import Any

import torch

from benchmarks.engine import Problem, backend_flags, build_engine

CONFIGS: list[dict[str, Any]] = [  # the default (auto on CUDA: bf16 history) first
    {"optimizer": "lbfgs", "history_size": 100, "history_dtype": "bf16"},
    {"optimizer": "adam"},
    {"optimizer": "lbfgs", "history_size": 50, "history_dtype": "fp32"},
    {"optimizer": "lbfgs", "history_size": 100, "history_dtype": "fp32"},
]


def attempt(
    problem: Problem, config: dict[str, Any], warmup: int = 4, timed: int = 4
) -> dict[str, Any]:
    """Build the engine and take `warmup` steps (eager ones and the graph capture), then time some."""
    options = dict(config)
    synth = build_engine(problem, options.pop("optimizer"), **options)
    for _ in range(warmup):
        synth.step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(timed):
        total = synth.step()["total"]
    finite = bool(torch.isfinite(total))  # synchronises
    ms = 1000 * (time.perf_counter() - started) / timed
    graph = synth.graph is not None and synth.graph.captured
    return {"ms_per_eval": round(ms, 2), "cuda_graph": graph, "finite": finite}


def fits(
    sizes: list[int], cap_gib: float = 16.0, device: str = "cuda", configs: list | None = None
) -> dict[str, Any]:
    """Try every size with every config under a per-process memory cap; report peaks and OOMs."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = min(1.0, cap_gib * 2**30 / total)
    rows, largest = [], {}
    for size in sizes:
        problem = Problem.make(device, size)
        for config in configs or CONFIGS:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(fraction, index)
            torch.cuda.reset_peak_memory_stats(device)
            row: dict[str, Any] = {"size": size, **config}
            try:
                with backend_flags(runner=True):
                    row.update(attempt(problem, config), fits=True)
                largest[_label(config)] = size
            except torch.OutOfMemoryError:
                row["fits"] = False
            except RuntimeError as error:  # e.g. cuDNN failing to get a workspace under the cap
                row.update(fits=False, error=str(error).splitlines()[0][:200])
            row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
            rows.append(row)
        del problem
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0, index)
    allocator = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    return {"cap_gib": cap_gib, "allocator": allocator, "largest_size": largest, "attempts": rows}


def parse_config(text: str) -> dict[str, Any]:
    """`adam` or `lbfgs:<history size>:<fp32|bf16>`."""
    name, *rest = text.split(":")
    if name == "adam":
        return {"optimizer": "adam"}
    return {"optimizer": name, "history_size": int(rest[0]), "history_dtype": rest[1]}


def _label(config: dict[str, Any]) -> str:
    if config["optimizer"] == "adam":
        return "adam"
    return f"lbfgs_h{config['history_size']}_{config['history_dtype']}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Which sizes fit in a GPU memory cap.")
    parser.add_argument("--sizes", default="1024,1536,2048")
    parser.add_argument("--configs", default="", help="e.g. lbfgs:100:bf16,adam (default: all)")
    parser.add_argument("--cap-gib", type=float, default=16.0)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    configs = [parse_config(text) for text in args.configs.split(",") if text] or None
    print(json.dumps(fits(sizes, args.cap_gib, configs=configs), indent=1))
