"""Optimisers by name: the interface a `Synthesizer` drives, and the registry of its kinds.

A kind is one `PixelOptimizer` subclass registered once with `@register_optimizer`: its `name`,
its options schema (`Options`, a dataclass whose `__post_init__` checks every option), its
memory need, how it is built over an image and what it carries from the stage before. A
`Synthesizer` receives an `OptimizerMaker` (a kind with its options), never loose settings.

Option errors are `OptionError`s naming the option as the kind knows it (`history_size=0: must
be >= 1`); the config layer turns them into one line naming the config key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Protocol

import torch

from stylelab.engine.options import OptionError


@dataclass(frozen=True)
class Placement:
    """Where an optimiser runs: `capturable` (its state ready for CUDA graphs), the forward's
    `precision`, and the box the pixels stay in."""

    capturable: bool = False
    precision: str = "fp32"
    bounds: tuple[float, float] | None = (0.0, 1.0)


class BatchOptimizer(Protocol):
    """What steps the jobs of a batch at once: `param` is their (K, ...) images."""

    param: torch.Tensor

    def step(self, grad: torch.Tensor, loss: torch.Tensor | None = None) -> None: ...


class PixelOptimizer(ABC):
    """What a `Synthesizer` drives: one update per evaluation, a state for checkpoints.

    A kind with a line search (`searching`) may reject the point just evaluated: it then
    exposes `accepted` (bool tensor: the last point evaluated was accepted), `iterate` (the
    last accepted point) and `steps` (tensor: steps taken).
    """

    name: ClassVar[str]
    Options: ClassVar[type]  # a dataclass of the kind's options, checked in __post_init__
    param: torch.Tensor  # the pixels it moves, in place
    searching: bool = False
    accepted: torch.Tensor  # searching kinds only
    steps: torch.Tensor  # searching kinds only

    @classmethod
    @abstractmethod
    def build(cls, param: torch.Tensor, options: Any, placement: Placement) -> PixelOptimizer:
        """The optimiser over `param` with `options` (an `Options`)."""

    @classmethod
    def memory_copies(cls, options: Any) -> float:
        """Image-sized fp32 copies it keeps (for the memory estimate): param, grad, one more."""
        return 3.0

    @abstractmethod
    def step(self, grad: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        """One update from the gradient (and loss) at the parameter's value, in place."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def carry_from(self, previous: PixelOptimizer) -> None:  # noqa: B027 (optional hook)
        """Take over what the previous stage's optimiser learnt (default: nothing)."""

    @classmethod
    def batched(cls, optimizers: Sequence[PixelOptimizer]) -> BatchOptimizer | None:
        """One optimiser stepping the (K, ...) images of a batch's jobs at once, taking over
        their images and states (each job's `param` becomes its row), or None (the default):
        each job then steps its own."""
        return None

    @property
    def iterate(self) -> torch.Tensor:
        """The last accepted point (searching kinds; others accept every point)."""
        raise NotImplementedError(f"{self.name} has no line search")


def batched_optimizer(optimizers: Sequence[PixelOptimizer]) -> BatchOptimizer | None:
    """One optimiser for the jobs of a batch (their kind's `batched`), or None where they are
    of different kinds or their kind cannot batch them: each job then steps its own."""
    kinds = {type(optimizer) for optimizer in optimizers}
    return kinds.pop().batched(optimizers) if len(kinds) == 1 else None


OPTIMIZERS: dict[str, type[PixelOptimizer]] = {}


def register_optimizer(kind: type[PixelOptimizer]) -> type[PixelOptimizer]:
    """Class decorator: make `kind` available as `optim.name=<kind.name>`."""
    OPTIMIZERS[kind.name] = kind
    return kind


def optimizer_kind(name: str) -> type[PixelOptimizer]:
    import stylelab.engine.optim  # noqa: F401  (registers the built-in kinds)

    if name not in OPTIMIZERS:
        raise OptionError("name", f"={name}: unknown optimizer '{name}': use one of {known()}")
    return OPTIMIZERS[name]


def known() -> str:
    return ", ".join(OPTIMIZERS)


@dataclass(frozen=True)
class OptimizerMaker:
    """A registered kind with its options: called with an image, it returns its optimiser."""

    kind: type[PixelOptimizer]
    options: Any

    @property
    def name(self) -> str:
        return self.kind.name

    def __call__(self, param: torch.Tensor, placement: Placement = Placement()) -> PixelOptimizer:
        return self.kind.build(param, self.options, placement)

    def memory_copies(self) -> float:
        return self.kind.memory_copies(self.options)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.options)}


def option_names(name: str) -> list[str]:
    """The options the kind `name` declares."""
    return [f.name for f in fields(optimizer_kind(name).Options)]


def loose_maker(name: str, **settings: Any) -> OptimizerMaker:
    """The kind `name` from settings some of which it may not have (the engine's Python API,
    `Synthesizer(loss, image, "adam", 0.05)`, and the config's shared keys): those are ignored."""
    names = option_names(name)
    return optimizer_maker(name, **{key: v for key, v in settings.items() if key in names})


def optimizer_maker(name: str, **options: Any) -> OptimizerMaker:
    """The kind `name` with `options` (checked by its schema; unknown ones are refused)."""
    kind = optimizer_kind(name)
    unknown = sorted(set(options) - {f.name for f in fields(kind.Options)})
    if unknown:
        raise OptionError(
            unknown[0],
            f": optim={name} has no option {unknown[0]} (it has {', '.join(option_names(name))})",
        )
    return OptimizerMaker(kind, kind.Options(**options))
