"""``/image/{n}`` of a PNG bomb (issue 29, finding 8): a 12000x12000 PNG of a few KB was decoded whole on
every ``?full=true`` request (4-6 s, +125 MB each). Now its header is read and the request refused (413),
and a full answer is at most ``max_side`` pixels on its longest side.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import start_server
from uit_reid.serve.gallery import DEFAULT_MAX_SIDE

TIMEOUT = 60


def write_png_bomb(path: Path, side: int) -> None:
    """A valid grey PNG of side x side black pixels, compressed row by row (never held whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\x00" * (side + 1)  # filter byte 0, then the row's pixels
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb_server(gallery, tmp_path_factory):
    """A service over three images: the bomb, a small one and one wider than ``max_side``."""
    from uit_reid.factory import load_model
    from uit_reid.retrieval import GalleryIndex

    base = tmp_path_factory.mktemp("bomb")
    write_png_bomb(base / "bomb.png", 12000)
    Image.new("RGB", (64, 128), (200, 30, 30)).save(base / "small.png")
    Image.new("RGB", (5000, 100), (30, 200, 30)).save(base / "wide.png")
    model = load_model(gallery["model"])
    dim = model.encoder.embed_dim
    index = GalleryIndex(dim, fingerprint=model.encoder.fingerprint())
    index.add(np.random.default_rng(0).standard_normal((3, dim)).astype(np.float32),
              ["bomb.png", "small.png", "wide.png"])
    index.save(base / "gallery.faiss")
    srv = start_server({**gallery, "index": base / "gallery.faiss"}, "bomb")
    yield srv, base
    srv.stop()


def test_the_png_bomb_is_refused_from_its_header(bomb_server) -> None:
    srv, base = bomb_server
    assert (base / "bomb.png").stat().st_size < 300_000
    message = (f"image 0 is 12000x12000 pixels: the service decodes images of at most {DEFAULT_MAX_SIDE}x"
               f"{DEFAULT_MAX_SIDE} ({DEFAULT_MAX_SIDE**2} pixels)")
    with httpx.Client(timeout=TIMEOUT) as client:
        before = client.get(srv.url + "/stats").json()["resident_memory_mb"]
        answers = [client.get(srv.url + "/image/0", params=params) for params in ({"full": "true"}, {})] * 5
        after = client.get(srv.url + "/stats").json()["resident_memory_mb"]
    for r in answers:
        assert (r.status_code, r.json()) == (413, {"error": message})
    assert after - before < 200, (before, after)  # never decoded: 12000^2 RGB alone is 412 MiB
    assert srv.alive()


def test_a_full_answer_is_capped_at_max_side(bomb_server) -> None:
    srv, _ = bomb_server
    with httpx.Client(timeout=TIMEOUT) as client:
        small = client.get(srv.url + "/image/1", params={"full": "true"})
        wide = client.get(srv.url + "/image/2", params={"full": "true"})
    assert small.status_code == 200 and wide.status_code == 200
    assert Image.open(io.BytesIO(small.content)).size == (64, 128)  # smaller images whole, as stored
    image = Image.open(io.BytesIO(wide.content))
    assert image.size == (DEFAULT_MAX_SIDE, round(100 * DEFAULT_MAX_SIDE / 5000))
    assert image.convert("RGB").getpixel((10, 10)) == (30, 200, 30)
