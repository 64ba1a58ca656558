"""Options of engine components (term kinds, optimisers): their errors and common rules.

A component checks its own options where it is built; its `OptionError` names the option as the
component knows it (`history_size=0: must be >= 1`), and the config layer turns it into one line
naming the config key (`optim.history_size=0: must be >= 1`), in one place.
"""

from __future__ import annotations

import math


class OptionError(ValueError):
    """A bad option of an engine component; the message is `<option><detail>`."""

    def __init__(self, option: str, detail: str):
        super().__init__(f"{option}{detail}")
        self.option, self.detail = option, detail


def check_positive(option: str, value: float) -> None:
    """`value` must be > 0 and finite."""
    if not (math.isfinite(value) and value > 0):
        raise OptionError(option, f"={value}: must be > 0 and finite")


def check_weight(option: str, value: float) -> None:
    """A loss weight: >= 0 and finite."""
    if not (math.isfinite(value) and value >= 0):
        raise OptionError(option, f"={value}: must be >= 0 and finite")


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise OptionError(option, f"={value}: use one of {', '.join(choices)}")
