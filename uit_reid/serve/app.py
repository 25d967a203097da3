"""The HTTP API and the page: a FastAPI app over a `SearchEngine` and the gallery's images.

Routes: ``GET /`` (the page), ``GET /search``, ``POST /search``, ``GET /image/{id}``,
``GET /healthz``, ``GET /stats``, ``GET /metrics`` (Prometheus). Every refusal is JSON ``{"error": "<one line>"}`` with a 4xx
status (503 once a file the index reads changed on disk); see `ServeLimits` for the limits.
"""

from __future__ import annotations

import contextlib
import logging
import math
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, fields
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, create_model
from starlette.exceptions import HTTPException

from uit_reid._version import __version__
from uit_reid.retrieval import Hit
from uit_reid.serve.gallery import GalleryImages, ImageTooLarge, UnknownImage
from uit_reid.serve.limits import SECURITY_HEADERS, AllowedHosts, BodySizeLimit, RateLimit
from uit_reid.serve.metrics import CONTENT_TYPE, RequestMetrics, ServiceMetrics
from uit_reid.serve.watched import FilesChanged

if TYPE_CHECKING:  # the app only calls the engine: it does not import torch or the index for it
    from uit_reid.serve.engine import SearchEngine

__all__ = ["ServeLimits", "create_app"]

logger = logging.getLogger(__name__)

_PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
               "/static/page.css": ("page.css", "text/css; charset=utf-8"),
               "/static/page.js": ("page.js", "text/javascript; charset=utf-8")}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeLimits:
    """What one request and one client may ask for; anything beyond gets a 4xx with a one-line reason.

    Attributes:
        max_query_chars: longest query, in characters.
        max_queries: most queries in one ``POST /search``.
        max_k: most results per query (the index size caps it too).
        max_body_bytes: largest request body.
        rate: requests per second per client address (0 turns the limit off); ``burst`` saved up.
        max_header_bytes: largest request head (request line and headers).
        request_timeout: seconds a request (head and body) may take to arrive.
        keep_alive_timeout: seconds an idle connection is kept open after an answer.
        max_connections: most connections open at once (`uit_reid.serve.connections`).

    Raises ValueError naming the first field outside its range.
    """

    max_query_chars: int = 512
    max_queries: int = 32
    max_k: int = 100
    max_body_bytes: int = 64 * 1024
    rate: float = 20.0
    burst: int = 60
    max_header_bytes: int = 16 * 1024
    request_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            low = 0 if field.name == "rate" else 1  # the timeouts too: a second at least
            kind = int if field.type == "int" else int | float
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value < low:
                what = "an integer" if field.type == "int" else "a number"
                raise ValueError(f"{field.name}: must be {what} of {low} or more, got {value!r}")


# --------------------------------------------------------------------------------- schema models
class ErrorResponse(BaseModel):
    """Every refusal (4xx, or 503 when the service cannot search): one line naming the argument or file at fault."""

    error: str = Field(description="what was wrong, naming the parameter or limit", examples=["q: the query is empty"])


def _hit_model() -> type[BaseModel]:
    """The JSON hit: the `uit_reid.retrieval.Hit` fields that carry a ``description`` (their types and
    descriptions taken from the dataclass) and where the image is served."""
    hints = typing.get_type_hints(Hit)
    described = {
        f.name: (hints[f.name], Field(description=f.metadata["description"]))
        for f in fields(Hit)
        if "description" in f.metadata
    }
    image_url = (str, Field(description="where the image's thumbnail is served (`?full=true` for the image)"))
    return create_model("Hit", **described, image_url=image_url)  # type: ignore[call-overload]


HitResponse = _hit_model()
"""A hit in the JSON answers (schema name ``Hit``)."""
_HIT_FIELDS = tuple(name for name in HitResponse.model_fields if name != "image_url")


def _hit_json(hit: Hit) -> dict[str, Any]:
    return {**{name: getattr(hit, name) for name in _HIT_FIELDS}, "image_url": f"/image/{hit.number}"}


class QueryResult(BaseModel):
    query: str = Field(description="the query as searched (surrounding white space removed)")
    results: list[HitResponse] = Field(description="the hits, best first (at most k)")  # type: ignore[valid-type]


class SearchRequest(BaseModel):
    queries: list[str] = Field(
        description="one or more descriptions (at most `max_queries` of them, each checked like `q` of `GET /search`)",
        examples=[["a man in a red jacket"]],
    )
    k: int = Field(10, description="results per query, 1 to `max_k`; more than the index holds returns the whole index")


class SearchResponse(BaseModel):
    k: int = Field(description="results per query that were asked for")
    results: list[QueryResult] = Field(description="one entry per query, in the order of the request")


class Health(BaseModel):
    status: str = Field(description='"ok", or "unavailable" (status 503) when a file the index reads changed on '
                                    "disk since the service loaded it: searches are refused until it restarts")
    index_size: int = Field(description="number of images in the gallery index")
    error: str | None = Field(None, description="why the service is unavailable (with status 503)")


class LatencyStats(BaseModel):
    p50: float | None = Field(description="median request latency in ms (null before the first search)")
    p90: float | None = Field(description="90th percentile in ms")
    p99: float | None = Field(description="99th percentile in ms")
    window: int = Field(description="how many recent search requests the percentiles are taken over")


class Stats(BaseModel):
    """The figures of `GET /stats` (it documents the route's answer; the route does not filter through it)."""

    index_size: int = Field(description="number of images in the gallery index")
    index_kind: str = Field(description="the index kind (flat, ivf, hnsw or a FAISS factory string)")
    index_mmap: bool = Field(description="whether the index's lists are memory-mapped from its file (IVF kinds)")
    resident_memory_mb: float | None = Field(
        description="the service process's resident memory (RSS) in MiB, mapped index pages in use included "
        "(null where the platform does not report it)")
    model_fingerprint: str | None = Field(description="fingerprint of the text encoder the index was built with")
    queries_served: int = Field(description="queries answered since start")
    search_requests: int = Field(description="search requests answered since start (one may hold several queries)")
    batches: int = Field(description="calls of the text encoder (micro-batches)")
    mean_batch_size: float = Field(description="mean queries per micro-batch")
    latency_ms: LatencyStats
    thumbnail_cache: dict[str, int] = Field(description="thumbnail cache `hits` and `misses`")
    limits: dict[str, float] = Field(description="the limits in force (`ServeLimits` fields) and `k_cap`")


_ERROR_TEXT = {
    400: "the query string or the body is not valid UTF-8, the body cannot be parsed, or the Host header "
         "names a host the service does not answer to",
    404: "no gallery image with this id",
    413: "the request body is larger than `max_body_bytes`",
    422: "a parameter is missing, malformed or outside its limits",
    429: "too many requests from this client address (the rate limit and its burst are used up)",
    503: "a file the index reads changed on disk since the service loaded it (`/healthz` says which): "
         "searches are refused until the service is restarted",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the refusals a route can give (all `ErrorResponse`)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ErrorResponse, "description": _ERROR_TEXT[status]}
        if status == 429:
            out[status]["headers"] = {"Retry-After": {"description": "whole seconds to wait before trying again",
                                                 "schema": {"type": "integer"}}}
    return out


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


def create_app(
    engine: SearchEngine,
    images: GalleryImages,
    limits: ServeLimits | None = None,
    *,
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS,
) -> FastAPI:
    """The service's ASGI app (run it with uvicorn; `uit_reid.serve.server.serve` does).

    Requests whose Host header names none of ``allowed_hosts`` are refused (``"*"`` allows any).
    """
    limits = limits or ServeLimits()
    checks = _RequestChecks(limits, len(engine))
    metrics = ServiceMetrics(engine)
    app = FastAPI(
        title="uit-reid search",
        version=__version__,
        description="Text-to-person search over one gallery index.",
        lifespan=_lifespan(engine),
    )
    app.state.engine = engine
    _add_error_handlers(app)
    _add_search_routes(app, engine, checks)
    _add_image_route(app, images)
    _add_status_routes(app, engine, images, checks, metrics)
    _add_page_routes(app)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    if limits.rate > 0:
        app.add_middleware(RateLimit, rate=limits.rate, burst=limits.burst)
    app.add_middleware(AllowedHosts, hosts=tuple(allowed_hosts))
    app.add_middleware(RequestMetrics, metrics=metrics)  # added last: runs first, so it counts refusals too
    return app


def _lifespan(engine: SearchEngine) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start the engine's batcher with the app, stop it (failing what is queued) when the app stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.batcher.start()
        try:
            yield
        finally:
            await engine.batcher.stop()

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal and failure as ``{"error": "<one line>"}``."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
        return _error(422, f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg")))

    @app.exception_handler(FilesChanged)
    async def files_changed(request: Request, exc: FilesChanged) -> JSONResponse:
        return _error(503, str(exc))  # logged once, when it was found (uit_reid.serve.watched)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal error (the service's log has the details)")


class _RequestChecks:
    """The per-request checks of queries and ``k`` against the limits (422 naming the argument)."""

    def __init__(self, limits: ServeLimits, index_size: int) -> None:
        self.limits = limits
        self.index_size = index_size
        self.k_cap = max(1, min(limits.max_k, index_size))

    def queries(self, queries: list[str]) -> list[str]:
        limits = self.limits
        if not queries:
            raise HTTPException(422, "queries: give at least one query")
        if len(queries) > limits.max_queries:
            raise HTTPException(422, f"queries: at most {limits.max_queries} per request, got {len(queries)}")
        out = []
        for i, q in enumerate(queries):
            q = q.strip()
            name = "q" if len(queries) == 1 else f"queries[{i}]"
            if not q:
                raise HTTPException(422, f"{name}: the query is empty")
            if len(q) > limits.max_query_chars:
                raise HTTPException(
                    422, f"{name}: the query has {len(q)} characters, at most {limits.max_query_chars} are allowed"
                )
            if any(ord(c) < 32 and c not in "\t\n\r" for c in q):
                raise HTTPException(422, f"{name}: the query contains control characters")
            if any(0xD800 <= ord(c) <= 0xDFFF for c in q):  # JSON's "\ud800" escapes: not text
                raise HTTPException(422, f"{name}: the query contains a lone UTF-16 surrogate (not valid text)")
            out.append(q)
        return out

    def k(self, k: int) -> int:
        """``k`` within the service's ``max_k``, capped at the index size as the CLI and the library cap it."""
        if not 1 <= k <= self.limits.max_k:
            raise HTTPException(422, f"k: must be between 1 and {self.limits.max_k} (the service's max_k), got {k}")
        return min(k, self.index_size)


def _add_search_routes(app: FastAPI, engine: SearchEngine, checks: _RequestChecks) -> None:
    """``GET /search`` (one query) and ``POST /search`` (several)."""
    limits = checks.limits
    q_text = (f"the description to search for: 1 to {limits.max_query_chars} characters once surrounding "
              "white space is removed, UTF-8, no control characters")
    k_text = f"results to return, 1 to {limits.max_k}; more than the index holds returns the whole index"

    @app.get("/search", response_model=SearchResponse, summary="Search with one query",
             responses=_errors(400, 413, 422, 429, 503))
    async def search_get(
        request: Request,
        q: str = Query(description=q_text),  # a default, not Annotated: the text is built from the limits
        k: int = Query(10, description=k_text),
    ) -> dict[str, Any]:
        """The gallery images that best match the description `q`, best first, with cosine scores."""
        # Starlette decodes the query string leniently (bad bytes become U+FFFD): re-read it strictly.
        raw = request.scope.get("query_string", b"").decode("latin-1")
        try:
            strict = [v for key, v in parse_qsl(raw, keep_blank_values=True, errors="strict") if key == "q"]
        except UnicodeDecodeError as err:
            raise HTTPException(400, "q: the query is not valid UTF-8") from err
        queries = checks.queries(strict[-1:] or [q])
        results = await engine.search(queries, checks.k(k))
        return {"k": k, "results": [{"query": queries[0], "results": [_hit_json(h) for h in results[0]]}]}

    @app.post("/search", response_model=SearchResponse, summary="Search with several queries at once",
              description=f"The top `k` images for each of 1 to {limits.max_queries} queries, in one answer.",
              responses=_errors(400, 413, 422, 429, 503))
    async def search_post(body: SearchRequest) -> dict[str, Any]:
        queries = checks.queries(body.queries)
        results = await engine.search(queries, checks.k(body.k))
        return {"k": body.k, "results": [{"query": q, "results": [_hit_json(h) for h in r]} for q, r in zip(queries, results)]}


def _add_image_route(app: FastAPI, images: GalleryImages) -> None:
    """``GET /image/{image_id}``: a gallery image by its number, never by a path."""

    @app.get(
        "/image/{image_id}",
        summary="A gallery image (a cached JPEG thumbnail, or the whole image as PNG with full=true)",
        responses={200: {"content": {"image/jpeg": {}, "image/png": {}},
                         "description": "JPEG thumbnail bytes, or PNG bytes with `full=true`"},
                   **_errors(404, 413, 422, 429),
                   413: {"model": ErrorResponse, "description": "the request body is larger than `max_body_bytes`, "
                         f"or the image has more than {images.max_side} x {images.max_side} pixels (read from its header: it is "
                         "not decoded)"}},
        response_class=Response,
    )
    def image(
        image_id: Annotated[str, Path(description="the item's number in the index, 0 to index size - 1, "
                                                  "as in a hit's `image_url`; never a file path")],
        full: bool = Query(False, description="the whole image as PNG instead of the cached JPEG thumbnail "  # noqa: B008
                           f"(scaled down to {images.max_side} pixels on its longest side if larger)"),
    ) -> Response:
        """Only images that are in the index are served: the id is a number, mapped to the path stored there."""
        # a plain def: FastAPI runs it in its thread pool, so decoding never blocks the event loop
        try:
            data = images.full(image_id) if full else images.thumbnail(image_id)
        except UnknownImage as err:
            raise HTTPException(404, str(err)) from err
        except ImageTooLarge as err:
            raise HTTPException(413, str(err)) from err
        headers = {**SECURITY_HEADERS, "cache-control": "public, max-age=3600"}
        return Response(data, media_type="image/png" if full else "image/jpeg", headers=headers)


def _add_status_routes(
    app: FastAPI, engine: SearchEngine, images: GalleryImages, checks: _RequestChecks, metrics: ServiceMetrics
) -> None:
    """``GET /healthz``, ``GET /stats`` (JSON) and ``GET /metrics`` (Prometheus)."""

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True, summary="Liveness, whether searches can be answered, the index size",
             responses={503: {"model": Health, "description": "a file the index reads changed on disk: searches "
                                                              "are refused (`error` says which)"}})
    async def healthz() -> Any:
        """Answers as soon as the service is up; never rate-limited."""
        problem = engine.files.problem()
        if problem is not None:
            return JSONResponse({"status": "unavailable", "index_size": len(engine), "error": problem},
                                status_code=503, headers=SECURITY_HEADERS)
        return {"status": "ok", "index_size": len(engine)}

    @app.get("/stats", summary="Index size, model fingerprint, queries served, latency percentiles (ms)",
             responses={200: {"model": Stats, "description": "the service's figures"}, **_errors(413, 429)},
             response_model=None)
    async def stats() -> dict[str, Any]:
        """Counters since the service started and the limits in force."""
        return {
            **engine.stats(),
            **metrics.stats(),
            "thumbnail_cache": {"hits": images.hits, "misses": images.misses},
            "limits": {**checks.limits.__dict__, "k_cap": checks.k_cap},
        }

    @app.get("/metrics", summary="The service's figures in Prometheus' text format", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}}, "description": _METRICS_TEXT}, **_errors(413, 429)})
    def prometheus_metrics() -> Response:
        """For a Prometheus scraper; see the service docs for the names. Rate-limited like every route."""
        return Response(metrics.render(), media_type=CONTENT_TYPE, headers=SECURITY_HEADERS)


_METRICS_TEXT = ("request counts by route, method and status, a request latency histogram by route, queries per "
                 "encoder batch, queries answered, the index size and the process's resident memory")


def _add_page_routes(app: FastAPI) -> None:
    """The search page and its static files (left out of the API schema)."""
    for path, (name, media_type) in _PAGE_FILES.items():
        content = resources.files("uit_reid.serve").joinpath("static", name).read_bytes()
        app.add_api_route(path, _static_file(content, media_type), methods=["GET"], include_in_schema=False,
                          name=f"page:{name}")


def _static_file(content: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def send_file() -> Response:
        return Response(content, media_type=media_type, headers=SECURITY_HEADERS)

    return send_file
