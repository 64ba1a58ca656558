"""Where images come from: local paths, scikit-image's bundled photos and http(s) URLs."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from stylelab.engine.images import DEFAULT_MAX_PIXELS, open_image, to_rgb
from stylelab.errors import ImageError

# scikit-image photos that ship with the package and load offline.
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",
    "retina",
    "cat",
)
# The bundled file of each photo whose file is not named after it.
SKIMAGE_FILES = {
    "immunohistochemistry": "ihc.png",
    "cat": "chelsea.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "rocket": "rocket.jpg",
    "retina": "retina.jpg",
}
SHA256_FRAGMENT = re.compile(r"#sha256=([0-9a-fA-F]{64})$")


def default_cache_dir() -> Path:
    """`$STYLELAB_CACHE`, else `$XDG_CACHE_HOME/stylelab`, else `~/.cache/stylelab`."""
    if os.environ.get("STYLELAB_CACHE"):
        return Path(os.environ["STYLELAB_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "stylelab"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def load_source(
    source: str,
    cache_dir: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: int = 255,
) -> Image.Image:
    """Load `source` (a path, `skimage:<name>` or `URL[#sha256=<hex>]`) as an 8-bit RGB image,
    transparent pixels composited onto grey level `background` (white; masks use black).

    Files declaring more than `max_pixels` pixels are refused before decoding.
    """
    source = str(source).strip()
    if not source:
        raise ImageError("empty image source: give a path, skimage:<name> or an http(s) URL")
    if source.startswith("skimage:"):
        return load_skimage(source.removeprefix("skimage:"))
    if is_url(source):
        return open_image(download(source, cache_dir), max_pixels, background)
    return open_image(Path(source).expanduser(), max_pixels, background)


def load_skimage(name: str) -> Image.Image:
    """One of scikit-image's bundled photos (no network needed)."""
    if name not in SKIMAGE_PHOTOS:
        raise ImageError(
            f"unknown scikit-image photo '{name}': choose one of {', '.join(SKIMAGE_PHOTOS)}"
        )
    from skimage import data

    return to_rgb(Image.fromarray(getattr(data, name)()))


def source_file(source: str, cache_dir: str | Path | None = None) -> Path:
    """The file `source` is loaded from: the path, the cached download of a URL (downloaded if
    not cached yet) or scikit-image's bundled file of a `skimage:` photo."""
    source = str(source).strip()
    if source.startswith("skimage:"):
        name = source.removeprefix("skimage:")
        if name not in SKIMAGE_PHOTOS:
            load_skimage(name)  # raises the one-line error
        import skimage.data

        return Path(skimage.data.__file__).parent / SKIMAGE_FILES.get(name, f"{name}.png")
    if is_url(source):
        return download(source, cache_dir)
    return Path(source).expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(source: str, cache_dir: str | Path | None = None, timeout: float = 30.0) -> Path:
    """Download a URL once into the cache and return the cached file.

    A `#sha256=<hex>` suffix is checked; a download that fails the check is deleted, not kept.
    """
    match = SHA256_FRAGMENT.search(source)
    if match is None and "#sha256=" in source:
        # A mistyped checksum must not silently turn into "no check" (urllib drops fragments).
        raise ImageError(
            f"bad checksum in {source}: #sha256= must be followed by 64 hex digits at the end of the URL"
        )
    expected = match.group(1).lower() if match else None
    url = source[: match.start()] if match else source
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = cache / "images"
    name = Path(urllib.request.url2pathname(url.split("?")[0].rstrip("/"))).name or "image"
    target = folder / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.is_file() and (expected is None or sha256_of(target) == expected):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ImageError(
            f"cannot keep downloads in {folder} ({error.strerror or error}): set cache_dir "
            "(or STYLELAB_CACHE) to a folder you can write"
        ) from None
    handle, tmp_name = tempfile.mkstemp(dir=folder, prefix=".download-")
    tmp = Path(tmp_name)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "stylelab"})
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(request, timeout=timeout) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"downloading {name}", leave=False
            ) as bar:
                while block := response.read(1 << 16):
                    out.write(block)
                    bar.update(len(block))
        if expected is not None:
            actual = sha256_of(tmp)
            if actual != expected:
                raise ImageError(
                    f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}; "
                    "the download was discarded (fix the #sha256= value or the URL)"
                )
        shutil.move(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise ImageError(
            f"could not download {url} ({reason}): check the URL and your network, "
            "or download it yourself and give the local path"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target
