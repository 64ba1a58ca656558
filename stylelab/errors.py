"""User-facing errors: each message is one line saying what is wrong and how to fix it."""

import re


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, ANSI styling removed (messages stay
    one line); the exception's type name if it has no message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch.load's messages carry ANSI bold
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class StyleLabError(Exception):
    """A problem the user can fix; the CLI prints its message without a traceback."""


class ImageError(StyleLabError):
    """An image source cannot be found, fetched or decoded."""


class WeightsError(StyleLabError):
    """Model weights cannot be loaded."""


class LayerError(StyleLabError):
    """A layer selection names a layer VGG-19 does not have."""


class DeviceError(StyleLabError):
    """The requested compute device is not available."""


class DivergenceError(StyleLabError):
    """The loss became NaN or infinite during optimisation."""
