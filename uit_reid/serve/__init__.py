"""``uit-reid serve``: a search service and a web page over a gallery index (``pip install 'uit_reid[serve]'``).

`build_service` loads a model and an index (refusing a pair whose fingerprints differ) and
returns a FastAPI app; `serve` runs it with uvicorn. The parts: `MicroBatcher` (concurrent queries
share one encoder call), `SearchEngine` (encoding, index search and the query counts),
`GalleryImages` (numbered images and cached thumbnails), the limits middleware and `create_app`.
`ServeProcess` runs the command in a child process (notebooks, scripts, load tests).
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    from uit_reid._errors import missing_extra

    raise missing_extra("uit_reid.serve", "serve", "FastAPI, uvicorn, prometheus_client") from err

from uit_reid.serve.app import ServeLimits, create_app
from uit_reid.serve.batcher import MicroBatcher
from uit_reid.serve.engine import SearchEngine
from uit_reid.serve.gallery import GalleryImages, UnknownImage
from uit_reid.serve.process import ServeProcess, free_port
from uit_reid.serve.server import build_service, serve

__all__ = [
    "GalleryImages",
    "MicroBatcher",
    "SearchEngine",
    "ServeLimits",
    "ServeProcess",
    "UnknownImage",
    "build_service",
    "create_app",
    "free_port",
    "serve",
]
