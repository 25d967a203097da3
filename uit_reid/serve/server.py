"""Load a model and an index, check that they belong together, and run the service with uvicorn."""

from __future__ import annotations

import functools
import gc
import ipaddress
import logging
import os
from pathlib import Path

from uit_reid._errors import EncoderMismatchError
from uit_reid.retrieval import GalleryIndex, ShardVectors
from uit_reid.serve.app import LOOPBACK_HOSTS, ServeLimits, create_app
from uit_reid.serve.connections import guarded_protocol
from uit_reid.serve.engine import SearchEngine
from uit_reid.serve.gallery import GalleryImages
from uit_reid.serve.watched import WatchedFile, WatchedFiles

__all__ = ["build_service", "connection_budget", "proxy_addresses", "serve"]

logger = logging.getLogger(__name__)


def build_service(
    index_path: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    limits: ServeLimits | None = None,
    max_batch: int = 64,
    max_wait: float = 0.002,
    thumb_size: tuple[int, int] = (256, 128),
    mmap: bool | None = None,
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS,
    rerank: int | None = None,
):
    """The app for ``index_path`` searched with the model at ``model_path`` (what `load_model` reads).

    ``mmap``: map the index's lists from its file instead of reading them (default: yes for IVF
    kinds, whose lists are most of the file; other kinds are read either way).
    ``rerank``: re-score that many candidates per query exactly from the embedding files the index
    was built from (`uit_reid.retrieval.ShardVectors`); None: no re-ranking.
    Raises `EncoderMismatchError` (a ValueError) when the index was built with another model.
    """
    from uit_reid.factory import load_model

    model = load_model(model_path, device=device)
    fingerprint = model.encoder.fingerprint()
    index_path = Path(index_path)
    try:
        index = GalleryIndex.load(index_path, expected_fingerprint=fingerprint, mmap=mmap is not False)
    except EncoderMismatchError as err:
        raise EncoderMismatchError(
            f"refusing to serve {index_path}: it was not built with the model {model_path} ({err})"
        ) from err
    if len(index) == 0:
        raise ValueError(f"refusing to serve {index_path}: the index is empty")

    encode = functools.partial(model.encode_captions, normalize=False)
    reranker = None if rerank is None else ShardVectors(index)
    files = WatchedFiles([*(WatchedFile(p, "index file") for p in index.mapped_files),
                          *(WatchedFile(p, "embedding file", reopened=True) for p in (reranker.files() if reranker else []))])
    engine = SearchEngine(index, encode, fingerprint=fingerprint, max_batch=max_batch, max_wait=max_wait,
                          rerank=reranker, candidates=rerank or 100, files=files)
    images = GalleryImages(index, index_path.resolve().parent, thumb_size=thumb_size)
    logger.info("serving %d images from %s with model %s", len(index), index_path, fingerprint)
    return create_app(engine, images, limits, allowed_hosts=allowed_hosts)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_addresses(text: str) -> tuple[str, ...]:
    """The comma-separated proxy addresses of ``--forwarded-allow-ips``: IP addresses, networks
    (``10.0.0.0/8``) or ``*``. Raises ValueError naming the first entry that is none of these."""
    out = tuple(part.strip() for part in text.split(",") if part.strip())
    for part in out:
        if part != "*":
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"{part!r} is not an IP address or network (give your proxies' addresses, "
                                 "comma-separated, or '*')") from None
    return out


_FD_RESERVE = 64  # descriptors left for the model, the index, images being read and the listening socket


def connection_budget() -> int:
    """The most connections the open-file limit (``ulimit -n``) leaves room for."""
    try:
        import resource  # Unix only
    except ImportError:  # no per-process descriptor limit to read (Windows)
        return 1 << 20
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, soft - _FD_RESERVE) if soft != resource.RLIM_INFINITY else 1 << 20


def serve(
    index_path: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    limits: ServeLimits | None = None,
    allowed_hosts: tuple[str, ...] = (),
    forwarded_allow_ips: tuple[str, ...] = (),
    **service_kwargs,
) -> None:
    """Build the service (`build_service`) and run it until interrupted.

    The service answers to the loopback names, ``host`` and ``allowed_hosts``. ``X-Forwarded-For``
    and ``X-Forwarded-Proto`` are believed only from the proxies in ``forwarded_allow_ips``.
    """
    import uvicorn

    limits = limits or ServeLimits()
    try:
        proxy_addresses(",".join(forwarded_allow_ips))
    except ValueError as err:
        raise ValueError(f"forwarded_allow_ips: {err}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port: must be between 0 and 65535, got {port}")
    budget = connection_budget()
    if limits.max_connections > budget:
        raise ValueError(f"max_connections: {limits.max_connections} is more than the open-file limit "
                         f"(ulimit -n) leaves room for ({budget})")
    hosts = (*LOOPBACK_HOSTS, *([host] if host not in ("0.0.0.0", "::", "") else []), *allowed_hosts)
    app = build_service(index_path, model_path, limits=limits, allowed_hosts=hosts, **service_kwargs)
    files: WatchedFiles = app.state.engine.files
    leased = files.take_leases()  # a writer waits until no search reads the file (module uit_reid.serve.watched)
    if files:
        logger.info("watching %d files the index reads for changes on disk (%d with a read lease)", len(files), leased)
    # The model, tokenizer and index are millions of long-lived objects: a full garbage collection
    # walking them all took ~200 ms on a 2-core CPU and stalled every request in flight. Frozen
    # objects are never scanned; what requests allocate is still collected.
    gc.collect()
    gc.freeze()
    if not _is_loopback(host):
        logger.warning("listening on %s: the service is reachable from other machines", host)
    protocol = guarded_protocol(max_connections=limits.max_connections, request_timeout=limits.request_timeout)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, server_header=False,
                    http=protocol, h11_max_incomplete_event_size=limits.max_header_bytes,
                    timeout_keep_alive=limits.keep_alive_timeout, proxy_headers=bool(forwarded_allow_ips),
                    forwarded_allow_ips=list(forwarded_allow_ips) or None)
    finally:
        files.close()
