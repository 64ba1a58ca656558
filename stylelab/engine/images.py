"""Reading, converting, resizing and writing images.

Images inside the engine are float tensors of shape (1, 3, H, W) with values in [0, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from stylelab.errors import ImageError

log = logging.getLogger(__name__)

# Pillow's own guard is a process-wide setting that warns from 89 MP and refuses from 179 MP;
# open_image applies its own per-call limit (`max_pixels`, the config key max_input_pixels)
# from the header, before anything is decoded, and leaves Pillow's guard to that check.
Image.MAX_IMAGE_PIXELS = None
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's default refusal threshold: ~13400 x 13400
UPSCALE_WARNING = 4.0  # warn when an input is enlarged more than this


def to_rgb(image: Image.Image, background: int = 255) -> Image.Image:
    """Convert any PIL mode (palette, grayscale, alpha, CMYK, 16-bit, float) to 8-bit RGB.

    Transparent pixels are composited onto grey level `background` (white); EXIF orientation
    is applied.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F":
            peak = max(float(array.max()), 1e-12) if array.max() > 1 else 1.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        under = Image.new("RGBA", image.size, (background, background, background, 255))
        image = Image.alpha_composite(under, image.convert("RGBA"))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _check_file(path: Path) -> None:
    """A readable, non-empty regular file (a FIFO would block the read forever)."""
    if not path.exists():
        raise ImageError(
            f"image not found: {path} (check the path, or use skimage:<name> or a URL)"
        )
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image: give the path of an image file")
    if not path.is_file():
        raise ImageError(
            f"{path} is not a regular file (a FIFO, socket or device): give the path of an image file"
        )
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes): re-download or replace the file")


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            f"{path} declares {width}x{height} pixels, over the limit of {max_pixels} "
            "(max_input_pixels; it may be a decompression bomb): shrink the image, or raise "
            "max_input_pixels if you trust it"
        )


def open_image(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, background: int = 255
) -> Image.Image:
    """Open and decode an image file as 8-bit RGB (transparency onto grey level `background`),
    with errors a user can act on.

    An image whose header declares more than `max_pixels` pixels is refused before decoding.
    """
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as image:
            _check_pixels(path, image.size, max_pixels)
            image.load()
            return to_rgb(image, background)
    except UnidentifiedImageError:
        raise ImageError(
            f"{path} is not an image Pillow can read: use a PNG, JPEG, TIFF, WebP or similar"
        ) from None
    except PermissionError:
        raise ImageError(
            f"{path}: permission denied: make the file readable (chmod a+r) or copy it elsewhere"
        ) from None
    except OSError as error:
        if error.errno is not None:  # the system could not read it (not a decoding problem)
            raise ImageError(
                f"could not read {path} ({error.strerror}): check the file and its disk"
            ) from None
        raise ImageError(f"{path} is truncated or corrupt ({error}): replace the file") from None
    except (SyntaxError, ValueError) as error:
        raise ImageError(f"{path} is truncated or corrupt ({error}): replace the file") from None


def long_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the longer side `size` pixels, keeping the aspect ratio."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_long_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so that the longer side is `size` pixels, keeping the aspect ratio."""
    width, height = image.size
    scale = size / max(width, height)
    new_size = long_side_size(width, height, size)
    if new_size == image.size:
        return image
    if scale < 0.5:
        log.info("downscaling %dx%d to %dx%d", width, height, *new_size)
    elif scale > UPSCALE_WARNING:
        log.warning(
            "upscaling a %dx%d input %.0fx to %dx%d: the result will be blurry; "
            "use a larger image or a smaller image_size/style_size",
            width,
            height,
            scale,
            *new_size,
        )
    return image.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float in [0, 1] -> (H, W, 3) uint8 (what W&B and PNG need)."""
    if image.dim() == 4:
        image = image[0]
    array = image.detach().float().clamp(0, 1).mul(255).add(0.5).to(torch.uint8)
    return array.permute(1, 2, 0).cpu().numpy()


def save_png(image: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Write an image tensor or uint8 array as PNG, atomically."""
    array = tensor_to_uint8(image) if isinstance(image, torch.Tensor) else image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (full disk) leaves no half file behind
    return path


def write_gif(
    frames: Sequence[np.ndarray], path: str | Path, seconds_per_frame: float = 0.1
) -> Path:
    """Write uint8 frames as a looping animated GIF (the last frame held a little longer)."""
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    path = Path(path)
    durations = [seconds_per_frame * 1000] * len(frames)
    durations[-1] = max(durations[-1], 1000)
    tmp = path.with_name(path.name + ".tmp")
    # Pillow takes a list of durations only for several frames; one frame needs a number.
    duration: float | list[float] = durations if len(durations) > 1 else durations[0]
    try:
        iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=duration, loop=0)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
