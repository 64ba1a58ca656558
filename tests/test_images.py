"""Reading (every PIL mode, EXIF, odd paths, broken files), resizing and writing images."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from stylelab.engine.images import (
    open_image,
    pil_to_tensor,
    resize_long_side,
    save_png,
    tensor_to_uint8,
    to_rgb,
    write_gif,
)
from stylelab.errors import ImageError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
PALETTE = [*RED, *GREEN, *BLUE] + [0] * (256 * 3 - 9)


def rgb_array(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def random_rgb(height: int = 12, width: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def palette_image() -> Image.Image:
    """4x4 palette image whose columns are palette indices 0, 1, 2, 0 (red, green, blue, red)."""
    image = Image.fromarray(np.tile(np.array([0, 1, 2, 0], np.uint8), (4, 1)), mode="P")
    image.putpalette(PALETTE)
    return image


# --- to_rgb / open_image for every mode ----------------------------------------------------------


def test_palette() -> None:
    """P mode: palette colours."""
    assert rgb_array(to_rgb(palette_image()))[0].tolist() == [
        list(RED),
        list(GREEN),
        list(BLUE),
        list(RED),
    ]


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_transparency(tmp_path: Path, suffix: str) -> None:
    """P mode with a transparent index: that colour becomes white, the others stay."""
    path = tmp_path / f"palette{suffix}"
    palette_image().save(path, transparency=1)
    with Image.open(path) as raw:
        assert raw.mode == "P" and raw.info.get("transparency") == 1
    row = rgb_array(open_image(path))[0].tolist()
    assert row == [list(RED), list(WHITE), list(BLUE), list(RED)]


def test_grayscale_l(tmp_path: Path) -> None:
    """L mode: the gray value in all three channels."""
    gray = np.array([[0, 100], [200, 255]], np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    array = rgb_array(open_image(path))
    assert array.shape == (2, 2, 3)
    for channel in range(3):
        assert np.array_equal(array[..., channel], gray)


def test_la_composited_on_white() -> None:
    """LA: alpha 0 -> white, 255 -> the gray value, 128 -> halfway."""
    luminance = np.full((2, 2), 100, np.uint8)
    alpha = np.array([[0, 255], [128, 255]], np.uint8)
    array = rgb_array(to_rgb(Image.fromarray(np.dstack([luminance, alpha]), mode="LA")))
    assert array[0, 0].tolist() == [255, 255, 255]
    assert array[0, 1].tolist() == [100, 100, 100]
    assert abs(int(array[1, 0, 0]) - round(100 * 128 / 255 + 255 * 127 / 255)) <= 1


def test_rgba_transparent_becomes_white(tmp_path: Path) -> None:
    """RGBA: transparent pixels become white, opaque ones keep their colour, half blends."""
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200  # dark red everywhere
    rgba[..., 3] = [[0, 255], [128, 255]]
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    array = rgb_array(open_image(path))
    assert array[0, 0].tolist() == [255, 255, 255]
    assert array[0, 1].tolist() == [200, 0, 0]
    assert abs(int(array[1, 0, 1]) - 127) <= 1  # green: 0 * 128/255 + 255 * 127/255


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk(tmp_path: Path, suffix: str) -> None:
    """CMYK (JPEG, TIFF): cyan 0, magenta/yellow full -> red."""
    path = tmp_path / f"cmyk{suffix}"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    pixel = rgb_array(open_image(path))[4, 4]
    assert pixel[0] > 240 and pixel[1] < 15 and pixel[2] < 15


def test_16bit_grayscale_png(tmp_path: Path) -> None:
    """I;16 PNG: 65535 -> 255, 32768 -> 128, 0 -> 0 (scaled, not clipped at 255)."""
    values = np.array([[65535, 32768], [0, 16384]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    array = rgb_array(open_image(path))
    assert array[..., 0].tolist() == [[255, 128], [0, 64]]
    assert np.array_equal(array[..., 0], array[..., 2])


def test_float_mode() -> None:
    """F mode in [0, 1] maps to 0..255; values above 1 are scaled by the maximum."""
    unit = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32), mode="F")
    assert rgb_array(to_rgb(unit))[..., 0].tolist() == [[0, 128], [255, 64]]
    wide = Image.fromarray(np.array([[0.0, 2.0], [4.0, 1.0]], np.float32), mode="F")
    assert rgb_array(to_rgb(wide))[..., 1].tolist() == [[0, 128], [255, 64]]


def test_float_tiff(tmp_path: Path) -> None:
    """A 32-bit float TIFF opens as RGB."""
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 1.0]], np.float32), mode="F").save(path)
    assert rgb_array(open_image(path))[0, :, 0].tolist() == [0, 255]


@pytest.mark.parametrize(("orientation", "blue_at"), [(6, "top"), (8, "bottom"), (1, "left")])
def test_exif_orientation(tmp_path: Path, orientation: int, blue_at: str) -> None:
    """EXIF orientation is applied: a 40x20 image with a blue left band, rotated 90 degrees."""
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    array = rgb_array(open_image(path)).astype(int)
    if orientation == 1:
        assert array.shape == (20, 40, 3)
    else:
        assert array.shape == (40, 20, 3)  # portrait now
    band = {"top": array[:5], "bottom": array[-5:], "left": array[:, :5]}[blue_at]
    far = {"top": array[-5:], "bottom": array[:5], "left": array[:, -5:]}[blue_at]
    assert band[..., 2].mean() > 200 and band[..., 0].mean() < 50
    assert far[..., 0].mean() > 200 and far[..., 2].mean() < 50


@pytest.mark.parametrize("name", ["Üñïçødé 画像.png", "with space.png", "dir with space/ü.png"])
def test_unusual_paths(tmp_path: Path, name: str) -> None:
    """Non-ASCII and space-containing paths, given as str or Path."""
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    pixels = random_rgb()
    Image.fromarray(pixels).save(path)
    assert np.array_equal(rgb_array(open_image(path)), pixels)
    assert np.array_equal(rgb_array(open_image(str(path))), pixels)


def test_open_image_lossless_rgb_and_closes_file(tmp_path: Path) -> None:
    """RGB PNG round trip is exact; the file can be removed afterwards (not held open)."""
    pixels = random_rgb()
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    image = open_image(path)
    path.unlink()
    assert np.array_equal(rgb_array(image), pixels)


# --- open_image errors ----------------------------------------------------------------------


def assert_image_error(path: Path, match: str) -> None:
    """open_image(path) raises a one-line ImageError mentioning the path and `match`."""
    with pytest.raises(ImageError, match=match) as info:
        open_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message


def test_error_missing_file(tmp_path: Path) -> None:
    assert_image_error(tmp_path / "nope.png", "not found")


def test_error_folder(tmp_path: Path) -> None:
    assert_image_error(tmp_path, "folder")


def test_error_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    assert_image_error(path, "empty")


def test_error_text_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    assert_image_error(path, "not an image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_error_truncated(tmp_path: Path, fmt: str, fraction: float) -> None:
    """A valid file cut short is reported as truncated or corrupt."""
    full = tmp_path / f"full.{fmt.lower()}"
    Image.fromarray(random_rgb(64, 64)).save(full, format=fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: int(len(data) * fraction)])
    assert_image_error(cut, "truncated or corrupt")


# --- resize, tensors, writing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "long_side", "expected"),
    [
        ((100, 50), 32, (32, 16)),
        ((50, 100), 32, (16, 32)),
        ((10, 5), 40, (40, 20)),
        ((1000, 3), 10, (10, 1)),
    ],
)
def test_resize_long_side(size: tuple[int, int], long_side: int, expected: tuple[int, int]) -> None:
    """The long side becomes `long_side`, the short side follows the aspect ratio (at least 1)."""
    resized = resize_long_side(Image.new("RGB", size, RED), long_side)
    assert resized.size == expected
    assert resized.mode == "RGB"


def test_resize_long_side_same_size_is_untouched() -> None:
    """Already the right size: returned unchanged."""
    image = Image.fromarray(random_rgb(16, 32))
    assert np.array_equal(np.asarray(resize_long_side(image, 32)), np.asarray(image))


def test_pil_to_tensor_layout_and_range() -> None:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1], pixel for pixel."""
    pixels = random_rgb(5, 7)
    tensor = pil_to_tensor(Image.fromarray(pixels))
    assert tensor.shape == (1, 3, 5, 7)
    assert tensor.dtype == torch.float32
    assert tensor.is_contiguous()
    assert tensor.min() >= 0.0 and tensor.max() <= 1.0
    assert tensor[0, 2, 4, 6].item() == pytest.approx(pixels[4, 6, 2] / 255)
    assert tensor[0, 0, 1, 3].item() == pytest.approx(pixels[1, 3, 0] / 255)


def test_tensor_uint8_round_trip() -> None:
    """uint8 -> tensor -> uint8 is exact; 3-D tensors work too."""
    pixels = random_rgb(6, 9)
    tensor = pil_to_tensor(Image.fromarray(pixels))
    back = tensor_to_uint8(tensor)
    assert back.dtype == np.uint8 and back.shape == (6, 9, 3)
    assert np.array_equal(back, pixels)
    assert np.array_equal(tensor_to_uint8(tensor[0]), pixels)


def test_tensor_to_uint8_rounds_and_clamps() -> None:
    """Values round to nearest and are clamped to [0, 1] first; gradients are not needed."""
    tensor = torch.tensor([-0.5, 0.0, 0.5, 0.999, 1.0, 1.5, 1 / 255, 0.4 / 255]).view(1, 1, 1, 8)
    tensor = tensor.expand(1, 3, 1, 8).clone().requires_grad_(True)
    assert tensor_to_uint8(tensor)[0, :, 0].tolist() == [0, 0, 128, 255, 255, 255, 1, 0]


def test_save_png(tmp_path: Path) -> None:
    """Tensors and arrays are written as readable PNGs, parents created, no temp file left."""
    pixels = random_rgb()
    from_array = save_png(pixels, tmp_path / "a" / "array.png")
    from_tensor = save_png(pil_to_tensor(Image.fromarray(pixels)), tmp_path / "b" / "tensor.png")
    for path in (from_array, from_tensor):
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert np.array_equal(np.asarray(image.convert("RGB")), pixels)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["array.png", "tensor.png"]
    save_png(np.zeros_like(pixels), from_array)  # overwrite
    assert np.asarray(Image.open(from_array)).max() == 0


def test_write_gif(tmp_path: Path) -> None:
    """N distinct frames -> an animated, looping GIF with N frames; last frame held >= 1 s."""
    frames = [np.full((8, 10, 3), value, np.uint8) for value in (0, 60, 120, 180, 240)]
    path = write_gif(frames, tmp_path / "synthesis.gif", seconds_per_frame=0.05)
    assert [p.name for p in tmp_path.iterdir()] == ["synthesis.gif"]
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 5 and gif.is_animated
        assert gif.info.get("loop") == 0
        durations, firsts = [], []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
            firsts.append(int(np.asarray(gif.convert("RGB"))[0, 0, 0]))
    assert durations[:-1] == [50] * 4 and durations[-1] >= 1000
    assert all(abs(a - b) <= 2 for a, b in zip(firsts, (0, 60, 120, 180, 240), strict=True))
    assert iio.imread(path, index=None).shape[0] == 5


def test_write_gif_single_frame(tmp_path: Path) -> None:
    """One frame (a run shorter than the image interval) still gives a GIF."""
    path = write_gif([np.zeros((4, 4, 3), np.uint8)], tmp_path / "one.gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 1


def test_write_gif_no_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        write_gif([], tmp_path / "none.gif")
    assert not list(tmp_path.iterdir())
