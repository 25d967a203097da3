"""A tiny trained model, its gallery index and real `uit-reid serve` processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'uit_reid[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install 'uit_reid[dev]')")

from live_server import ROOT, ServeProcess, free_port, gallery_args, serve_command, serve_env  # noqa: E402,F401
from tiny_run import train_tiny_run  # noqa: E402

from uit_reid.cli import main  # noqa: E402


@pytest.fixture(scope="session")
def gallery(tmp_path_factory) -> dict[str, Path]:
    """`uit-reid synth` + `uit-reid train` (2 steps) + `uit-reid index build` over the test images."""
    base = tmp_path_factory.mktemp("serve")
    data = train_tiny_run(base, num_ids=16)["data"]
    index = base / "gallery.faiss"
    assert main(["index", "build", "--model", str(base / "run" / "best"), "--images", str(data / "imgs"),
                 "--out", str(index), "--device", "cpu"]) == 0
    return {"base": base, "index": index, "model": base / "run" / "best", "images": data / "imgs"}


def start_server(gallery: dict[str, Path], name: str, *extra: str) -> ServeProcess:
    return ServeProcess(gallery_args(gallery, *extra), log=gallery["base"] / f"{name}.log", env=serve_env(), cwd=ROOT)


@pytest.fixture(scope="session")
def server(gallery) -> Iterator[ServeProcess]:
    """One service for the API and page tests (rate limit high enough for them)."""
    srv = start_server(gallery, "server", "--rate-limit", "500", "--burst", "500", "--max-k", "50")
    yield srv
    srv.stop()
