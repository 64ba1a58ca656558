"""Schedules: the stages of a synthesis, each a size (the long side) and a number of evaluations.

`single` is one stage at the final size. `pyramid` synthesises coarse-to-fine: sizes grow from
`min_size` by `factor` up to the final size (or are given), and each stage starts from the
previous stage's image, upsampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from numbers import Integral

SCHEDULES = ("single", "pyramid")


@dataclass(frozen=True)
class Stage:
    size: int  # long side of the synthesis, px
    steps: int  # evaluations in this stage
    first_step: int  # global index of its first evaluation

    @property
    def end(self) -> int:
        return self.first_step + self.steps


def pyramid_sizes(final_size: int, min_size: int = 128, factor: float = math.sqrt(2)) -> list[int]:
    """`min_size`, `min_size * factor`, ... below `final_size`, then `final_size` itself."""
    if factor <= 1:
        raise ValueError(f"schedule.factor={factor}: must be > 1")
    sizes: list[int] = []
    size = float(min_size)
    while round(size) < final_size:
        if not sizes or round(size) > sizes[-1]:
            sizes.append(round(size))
        size *= factor
    return [*sizes, final_size]


def make_stages(sizes: Sequence[int], steps: int | Sequence[int]) -> list[Stage]:
    """Stages of the given sizes; `steps` is one number for all, or one per stage."""
    # `int |`: type checkers do not count int as an Integral (numpy's integers are one)
    counts = [steps] * len(sizes) if isinstance(steps, int | Integral) else list(steps)
    if len(counts) != len(sizes):
        raise ValueError(f"{len(counts)} step counts given for {len(sizes)} stages {list(sizes)}")
    if any(size < 1 for size in sizes) or any(a >= b for a, b in pairwise(sizes)):
        raise ValueError(f"stage sizes {list(sizes)} must be positive and increasing")
    if any(isinstance(n, bool) or not isinstance(n, Integral) or n < 1 for n in counts):
        raise ValueError(f"steps per stage {counts} must each be a whole number >= 1")
    stages, first = [], 0
    for size, count in zip(sizes, counts, strict=True):
        stages.append(Stage(int(size), int(count), first))
        first += count
    return stages


def make_schedule(
    name: str,
    image_size: int,
    steps: int,
    min_size: int = 128,
    factor: float = math.sqrt(2),
    sizes: Sequence[int] | None = None,
    stage_steps: int | Sequence[int] | None = None,
) -> list[Stage]:
    """`single`: one stage of `steps` at `image_size`; `pyramid`: `sizes` (or sizes from
    `min_size` by `factor`) ending at `image_size`, `stage_steps` each (default `steps`)."""
    if name == "single":
        return make_stages([image_size], steps)
    if name != "pyramid":
        raise ValueError(f"unknown schedule '{name}': use {' or '.join(SCHEDULES)}")
    if sizes:
        if sizes[-1] != image_size:
            raise ValueError(f"schedule.sizes={list(sizes)} must end at image_size={image_size}")
        chosen = list(sizes)
    else:
        chosen = pyramid_sizes(image_size, min_size, factor)
    return make_stages(chosen, steps if stage_steps is None else stage_steps)
