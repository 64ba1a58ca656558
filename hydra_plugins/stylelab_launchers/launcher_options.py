"""The batched launcher's options, checked before any job starts: a bad value ends the sweep
in one line (not Hydra's instantiation error, nor the same failure in every job)."""

from __future__ import annotations

import sys
from typing import Any

from stylelab.engine.device import resolve_device
from stylelab.errors import DeviceError
from stylelab.preflight import print_error


def refuse(message: str) -> None:
    """End the command with one error line (SystemExit passes Hydra's instantiate untouched)."""
    print_error(message)
    sys.exit(1)


def checked_batch_size(value: Any) -> int:
    """`hydra.launcher.batch_size` as a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        refuse(f"hydra.launcher.batch_size={value}: use a whole number, 1 or more")
    return value


def checked_devices(value: Any) -> list[str]:
    """`hydra.launcher.devices` as a list of devices this machine has (a single name, e.g.
    `devices=cpu`, is a list of one); [] if not given."""
    if not value:
        return []
    names = [str(value)] if isinstance(value, str) else [str(name) for name in value]
    for name in names:
        try:
            resolve_device(name)
        except DeviceError as error:
            problem = str(error).partition(": use ")[0]  # its advice is about device=
            refuse(
                f"hydra.launcher.devices={names}: {problem}; this key overrides each job's "
                "device=, so list devices this machine has (e.g. hydra.launcher.devices=[cpu]) "
                "or leave it out"
            )
    return names
