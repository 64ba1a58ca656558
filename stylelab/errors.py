"""User-facing errors: each message is one line saying what is wrong and how to fix it."""


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
