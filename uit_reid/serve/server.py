"""Load a checkpoint and an index, check that they belong together, and run the service with uvicorn."""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
from pathlib import Path

import torch

from uit_reid.retrieval import GalleryIndex
from uit_reid.serve.app import ServeLimits, create_app
from uit_reid.serve.engine import SearchEngine
from uit_reid.serve.gallery import GalleryImages

__all__ = ["build_service", "serve"]

logger = logging.getLogger(__name__)


def build_service(
    index_path: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    device: str = "cpu",
    limits: ServeLimits | None = None,
    max_batch: int = 64,
    max_wait: float = 0.002,
    thumb_size: tuple[int, int] = (256, 128),
    mmap: bool | None = None,
):
    """The app for ``index_path`` searched with the model at ``checkpoint``.

    ``mmap``: map the index's lists from its file instead of reading them (default: yes for IVF
    kinds, whose lists are most of the file; other kinds are read either way).
    Raises ValueError when the index was built with another model (its fingerprint differs).
    """
    from uit_reid.factory import load_model

    model = load_model(checkpoint, device=device)
    fingerprint = model.encoder.fingerprint()
    index_path = Path(index_path)
    try:
        index = GalleryIndex.load(index_path, expected_fingerprint=fingerprint, mmap=mmap is not False)
    except ValueError as err:
        if "fingerprint" not in str(err):
            raise
        raise ValueError(
            f"refusing to serve {index_path}: it was not built with the checkpoint {checkpoint} ({err})"
        ) from err
    if len(index) == 0:
        raise ValueError(f"refusing to serve {index_path}: the index is empty")

    def encode(texts: list[str]) -> torch.Tensor:
        return model.encode_texts(model.encoder.tokenize(texts).to(device), normalize=False)

    engine = SearchEngine(index, encode, fingerprint=fingerprint, max_batch=max_batch, max_wait=max_wait)
    images = GalleryImages(index.ids(), index_path.resolve().parent, thumb_size=thumb_size)
    logger.info("serving %d images from %s with model %s", len(index), index_path, fingerprint)
    return create_app(engine, images, limits)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    index_path: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    **service_kwargs,
) -> None:
    """Build the service (`build_service`) and run it until interrupted."""
    import uvicorn

    app = build_service(index_path, checkpoint, **service_kwargs)
    # The model, tokenizer and index are millions of long-lived objects: a full garbage collection
    # walking them all took ~200 ms on a 2-core CPU and stalled every request in flight. Frozen
    # objects are never scanned; what requests allocate is still collected.
    gc.collect()
    gc.freeze()
    if not _is_loopback(host):
        logger.warning("listening on %s: the service is reachable from other machines", host)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, server_header=False)
