"""Stop signals: SIGINT, SIGTERM and SIGUSR2 become a flag the synthesis loop checks."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGUSR2 arrived during the run; the state was checkpointed."""

    def __init__(self, signum: int, step: int = -1):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


# SIGUSR2: the warning SLURM sends (through submitit's `--signal=USR2@<signal_delay_s>`) before
# a job's time limit; absent on Windows.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR2") if hasattr(signal, name)
)


@contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM/SIGUSR2 into a flag the loop checks between steps (restored afterwards).

    A second signal of a kind already received (Ctrl-C twice) stops at once; a different one
    (SLURM's TERM after its USR2) does not interrupt the checkpoint under way.
    """
    received: list[int] = []

    def handler(signum, frame):
        if signum in received:  # the same signal again: stop now
            raise KeyboardInterrupt
        if not received:
            received.append(signum)

    previous = {}
    for signum in STOP_SIGNALS:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[signum] = signal.signal(signum, handler)
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
