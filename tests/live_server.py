"""Real `uit-reid serve` processes for the service and CLI tests (`uit_reid.serve.process`)."""

from __future__ import annotations

import os
from pathlib import Path

from uit_reid.serve import process
from uit_reid.serve.process import ServeProcess, free_port

__all__ = ["ROOT", "ServeProcess", "free_port", "gallery_args", "serve_command", "serve_env"]

ROOT = Path(__file__).resolve().parents[1]


def gallery_args(gallery: dict[str, Path], *extra: str) -> list[str]:
    """`uit-reid serve` arguments for ``gallery["index"]`` with ``gallery["model"]`` on the CPU."""
    return ["--index", str(gallery["index"]), "--model", str(gallery["model"]), "--device", "cpu", *extra]


def serve_command(gallery: dict[str, Path], port: int, *extra: str) -> list[str]:
    """The whole command line, for tests that run the process themselves."""
    return process.serve_command(gallery_args(gallery, *extra), port)


def serve_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
