"""Image sources: local paths, scikit-image's photos and http(s) URLs through a download cache."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylelab.engine.sources import SKIMAGE_PHOTOS, default_cache_dir, download, load_source
from stylelab.errors import ImageError


def png_bytes(seed: int = 0) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), pixels


@dataclass
class Server:
    """A local HTTP server: `files` maps paths to bodies, `hits` counts requests per path."""

    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    hits: Counter = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(base="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits[self.path] += 1
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def cached_files(cache: Path) -> list[Path]:
    """Every file under the cache, hidden temporary files included."""
    return sorted(p for p in cache.rglob("*") if p.is_file())


def assert_one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message
    return message


# --- scikit-image and local files -------------------------------------------------------------


def test_skimage_astronaut_offline() -> None:
    """skimage:astronaut is bundled: 512x512 RGB."""
    image = load_source("skimage:astronaut")
    assert image.mode == "RGB"
    assert image.size == (512, 512)
    assert np.asarray(image).std() > 10


@pytest.mark.parametrize("name", SKIMAGE_PHOTOS)
def test_every_listed_skimage_photo_loads_offline(name: str) -> None:
    """Every advertised photo loads without network as RGB (grayscale ones converted)."""
    image = load_source(f"skimage:{name}")
    assert image.mode == "RGB"
    assert min(image.size) >= 64


def test_skimage_unknown_name() -> None:
    """An unknown photo lists the choices."""
    with pytest.raises(ImageError, match="unknown scikit-image photo 'moonwalk'") as info:
        load_source("skimage:moonwalk")
    message = assert_one_line(info.value)
    for name in SKIMAGE_PHOTOS:
        assert name in message


def test_local_path_and_errors(tmp_path: Path) -> None:
    """Plain paths (whitespace stripped) load; empty and missing sources raise ImageError."""
    data, pixels = png_bytes()
    path = tmp_path / "local image.png"
    path.write_bytes(data)
    assert np.array_equal(np.asarray(load_source(f"  {path}  ")), pixels)
    with pytest.raises(ImageError, match="empty image source"):
        load_source("   ")
    with pytest.raises(ImageError, match="not found"):
        load_source(str(tmp_path / "missing.png"))


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$STYLELAB_CACHE, else $XDG_CACHE_HOME/stylelab, else ~/.cache/stylelab."""
    monkeypatch.setenv("STYLELAB_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("STYLELAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "stylelab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "stylelab"


# --- URLs ---------------------------------------------------------------------------------------


def test_url_downloaded_once(server: Server, tmp_path: Path) -> None:
    """First load downloads into cache_dir/images; the second reads the cache."""
    data, pixels = png_bytes()
    server.files["/pics/style.png"] = data
    url = server.url("/pics/style.png")
    first = load_source(url, cache_dir=tmp_path)
    assert np.array_equal(np.asarray(first), pixels)
    assert server.hits["/pics/style.png"] == 1
    files = cached_files(tmp_path)
    assert len(files) == 1 and files[0].parent == tmp_path / "images"
    assert files[0].name.endswith("-style.png")
    assert files[0].read_bytes() == data
    second = load_source(url, cache_dir=str(tmp_path))
    assert np.array_equal(np.asarray(second), pixels)
    assert server.hits["/pics/style.png"] == 1
    assert download(url, cache_dir=tmp_path) == files[0]


def test_url_uses_default_cache(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without cache_dir, $STYLELAB_CACHE is used."""
    monkeypatch.setenv("STYLELAB_CACHE", str(tmp_path / "env cache"))
    server.files["/a.png"] = png_bytes()[0]
    path = download(server.url("/a.png"))
    assert path.parent == tmp_path / "env cache" / "images"


def test_different_urls_same_name_do_not_collide(server: Server, tmp_path: Path) -> None:
    """Two URLs ending in the same file name are cached separately."""
    server.files["/one/x.png"], one = png_bytes(1)
    server.files["/two/x.png"], two = png_bytes(2)
    assert np.array_equal(np.asarray(load_source(server.url("/one/x.png"), tmp_path)), one)
    assert np.array_equal(np.asarray(load_source(server.url("/two/x.png"), tmp_path)), two)
    assert len(cached_files(tmp_path)) == 2


def test_url_with_correct_sha256(server: Server, tmp_path: Path) -> None:
    """#sha256=<hex> that matches: loads (upper-case hex too) and caches once."""
    data, pixels = png_bytes()
    server.files["/ok.png"] = data
    digest = hashlib.sha256(data).hexdigest()
    image = load_source(server.url(f"/ok.png#sha256={digest}"), cache_dir=tmp_path)
    assert np.array_equal(np.asarray(image), pixels)
    load_source(server.url(f"/ok.png#sha256={digest.upper()}"), cache_dir=tmp_path)
    assert server.hits["/ok.png"] == 1  # the fragment is not sent and the cache is shared
    assert len(cached_files(tmp_path)) == 1


def test_url_with_wrong_sha256(server: Server, tmp_path: Path) -> None:
    """A mismatching checksum raises ImageError and leaves no file in the cache."""
    server.files["/bad.png"] = png_bytes()[0]
    with pytest.raises(ImageError, match="checksum mismatch") as info:
        load_source(server.url("/bad.png#sha256=" + "0" * 64), cache_dir=tmp_path)
    assert server.hits["/bad.png"] == 1
    assert "0" * 64 in assert_one_line(info.value)
    assert cached_files(tmp_path) == []


def test_url_with_malformed_sha256(server: Server, tmp_path: Path) -> None:
    """A checksum that is not 64 hex digits is an error, not a silently skipped check."""
    server.files["/c.png"] = png_bytes()[0]
    for fragment in ("#sha256=abc123", "#sha256=" + "g" * 64, "#sha256="):
        with pytest.raises(ImageError, match="sha256"):
            load_source(server.url("/c.png" + fragment), cache_dir=tmp_path)
    assert cached_files(tmp_path) == []


def test_cached_file_with_wrong_checksum_is_downloaded_again(
    server: Server, tmp_path: Path
) -> None:
    """A cached file that no longer matches the checksum is replaced by a fresh download."""
    data, pixels = png_bytes()
    server.files["/re.png"] = data
    url = server.url(f"/re.png#sha256={hashlib.sha256(data).hexdigest()}")
    load_source(url, cache_dir=tmp_path)
    (cached,) = cached_files(tmp_path)
    cached.write_bytes(b"damaged")
    assert np.array_equal(np.asarray(load_source(url, cache_dir=tmp_path)), pixels)
    assert server.hits["/re.png"] == 2
    assert cached.read_bytes() == data


def test_url_404(server: Server, tmp_path: Path) -> None:
    """A 404 raises a one-line ImageError with the URL; nothing is cached."""
    url = server.url("/missing.png")
    with pytest.raises(ImageError, match="could not download") as info:
        load_source(url, cache_dir=tmp_path)
    message = assert_one_line(info.value)
    assert url in message and "Not Found" in message
    assert server.hits["/missing.png"] == 1
    assert cached_files(tmp_path) == []


def test_url_unreachable(tmp_path: Path) -> None:
    """A closed port fails fast with ImageError naming the URL; nothing is cached."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.png"
    start = time.monotonic()
    with pytest.raises(ImageError, match="could not download") as info:
        load_source(url, cache_dir=tmp_path)
    assert time.monotonic() - start < 5
    assert url in assert_one_line(info.value)
    assert cached_files(tmp_path) == []


def test_url_not_an_image(server: Server, tmp_path: Path) -> None:
    """A page that is not an image downloads but fails to decode, with ImageError."""
    server.files["/page.png"] = b"<html>login required</html>"
    with pytest.raises(ImageError, match="not an image"):
        load_source(server.url("/page.png"), cache_dir=tmp_path)
