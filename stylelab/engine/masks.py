"""Spatial masks for guided style terms (Gatys et al. 2017, "Controlling Perceptual Factors in
Neural Style Transfer"): loading or generating a mask at a stage's size and propagating it to
each VGG layer's resolution.

A mask is a float tensor (1, 1, H, W) in [0, 1]; white (1) selects. Sources are anything
`load_source` accepts (converted to one channel) or a generated `mask:<name>`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stylelab.engine.features import LAYER_NAMES
from stylelab.engine.sources import load_source
from stylelab.errors import ImageError

MASK_PREFIX = "mask:"
GENERATED_MASKS = ("all", "none", "left", "right", "top", "bottom")


def generated_mask(name: str, size_hw: tuple[int, int]) -> torch.Tensor:
    """`all`, `none` or a half: a pixel belongs to `left` if its centre lies left of the middle
    (so `left` + `right` and `top` + `bottom` are exactly all ones, also for odd sizes)."""
    height, width = size_hw
    rows = (torch.arange(height) + 0.5 < height / 2).view(height, 1).expand(height, width)
    columns = (torch.arange(width) + 0.5 < width / 2).view(1, width).expand(height, width)
    halves = {"left": columns, "right": ~columns, "top": rows, "bottom": ~rows}
    if name == "all":
        mask = torch.ones(height, width)
    elif name == "none":
        mask = torch.zeros(height, width)
    elif name in halves:
        mask = halves[name].float()
    else:
        raise ImageError(
            f"unknown generated mask '{MASK_PREFIX}{name}': use one of "
            + ", ".join(MASK_PREFIX + known for known in GENERATED_MASKS)
            + " or an image"
        )
    return mask.view(1, 1, height, width)


def check_aspect_ratio(source: str, mask_wh: tuple[int, int], size_hw: tuple[int, int]) -> None:
    """One-line ImageError if the mask's aspect ratio is not the guided image's (up to the
    rounding of a side to whole pixels, or 1%)."""
    (mask_w, mask_h), (height, width) = mask_wh, size_hw
    mask_aspect, aspect = mask_w / mask_h, width / height
    tolerance = max(0.01, 1.0 / min(height, width))
    if abs(mask_aspect - aspect) > tolerance * aspect:
        raise ImageError(
            f"mask {source} is {mask_w}x{mask_h} (aspect {mask_aspect:.3f}) but the image it "
            f"guides is {width}x{height} (aspect {aspect:.3f}): give a mask with the same "
            "aspect ratio"
        )


def load_mask(
    source: str, size_hw: tuple[int, int], cache_dir: str | Path | None = None
) -> torch.Tensor:
    """A mask (1, 1, H, W) in [0, 1] at `size_hw` from an image source or `mask:<name>`.

    Images are converted to luminance (white = 1; transparent pixels count as black, so an
    RGBA mask's alpha limits it) and resized bilinearly; call once per stage
    with that stage's size of the image the mask belongs to (content or style).
    """
    source = str(source).strip()
    if source.startswith(MASK_PREFIX):
        return generated_mask(source.removeprefix(MASK_PREFIX), size_hw)
    image = load_source(source, cache_dir, background=0).convert("L")
    check_aspect_ratio(source, image.size, size_hw)
    height, width = size_hw
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).view(1, 1, height, width).clamp(0, 1)


def pools_up_to(layer: int) -> int:
    """How many pooling layers lie at or before VGG-19 layer index `layer`."""
    return sum(1 for name in LAYER_NAMES[: layer + 1] if name.startswith("pool"))


def propagate_mask(mask: torch.Tensor, layer: int) -> torch.Tensor:
    """The mask at the output resolution of VGG-19 layer `layer`: convolutions (padding 1) and
    ReLUs keep the size, each pool halves it (2x2, stride 2, floor), here by 2x2 averaging,
    which keeps masks in [0, 1], all-ones masks exactly ones and complementary masks summing
    to exactly one."""
    for _ in range(pools_up_to(layer)):
        mask = F.avg_pool2d(mask, kernel_size=2, stride=2)
    return mask


def layer_masks(mask: torch.Tensor, layers: Iterable[int]) -> dict[int, torch.Tensor]:
    """`propagate_mask` for several layers (once per stage, at target-building time)."""
    return {layer: propagate_mask(mask, layer) for layer in layers}
