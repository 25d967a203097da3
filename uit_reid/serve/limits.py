"""Request limits for the search service: allowed Host names, a per-client rate limit, a body size cap.

All are plain ASGI middleware, so every route is covered and an oversized body is refused before it
is read into memory. Refusals are JSON ``{"error": ...}`` (status 400, 413 or 429) with the
`SECURITY_HEADERS` every answer of the service carries.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

__all__ = ["SECURITY_HEADERS", "AllowedHosts", "BodySizeLimit", "RateLimit", "TokenBuckets", "host_name"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'self'; img-src 'self'; frame-ancestors 'none'",
}
_SECURITY_HEADER_BYTES = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]


def error_body(message: str) -> bytes:
    """The JSON body of every refusal: ``{"error": message}`` (ASCII-escaped, so any text is safe)."""
    return json.dumps({"error": message}).encode()


async def _refuse(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = error_body(message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        *_SECURITY_HEADER_BYTES, *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TokenBuckets:
    """One token bucket per client key: ``rate`` tokens per second, at most ``burst`` saved up.

    ``take(key)`` returns 0.0 when a request may go ahead, else the seconds until it may. At most
    ``max_clients`` buckets are kept (the least recently seen are dropped: they were full anyway
    or will refill before long).
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.max_clients = int(max_clients)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0 - 1e-9:  # elapsed times summed in floats can land a hair under a whole token
                tokens = max(tokens - 1.0, 0.0)
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait


class RateLimit:
    """ASGI middleware: 429 with ``Retry-After`` once a client (by IP address) exceeds its bucket.

    Paths in ``exempt`` (the health check, say) are never limited. ``clock`` is the buckets' time source.
    """

    def __init__(
        self, app: ASGIApp, *, rate: float, burst: int, exempt: tuple[str, ...] = ("/healthz",),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst, clock=clock)
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.buckets.take(client[0] if client else "unknown")
        if wait > 0:
            retry = str(max(1, math.ceil(wait))).encode()
            await _refuse(
                send, 429,
                f"too many requests: at most {self.buckets.rate:g} per second per client (burst {self.buckets.burst})",
                [(b"retry-after", retry)],
            )
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes`` (by Content-Length or as it streams)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self) -> str:
        return f"request body too large: at most {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                await _refuse(send, 400, "Content-Length is not a number")
                return
            if too_big:
                await _refuse(send, 413, self._message())
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # the app's exception handler turns this into the same 413 answer
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)


def host_name(host: str) -> str:
    """The name in a Host header or a ``--host`` value, lower case, without port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class AllowedHosts:
    """ASGI middleware: 400 unless the request's Host header names one of ``hosts`` (``"*"``: any).

    A browser page on another site can reach a loopback service by pointing its own name at
    127.0.0.1 (DNS rebinding); its requests then carry that name in Host, and are refused here.
    """

    def __init__(self, app: ASGIApp, *, hosts: tuple[str, ...]) -> None:
        if not hosts:
            raise ValueError("hosts: give at least one allowed host name (or '*')")
        self.app = app
        self.hosts = frozenset(host_name(h) for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "*" in self.hosts:
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope.get("headers") or [] if k == b"host"]
        if len(values) != 1:
            await _refuse(send, 400, "Host: the request must carry exactly one Host header")
            return
        name = host_name(values[0].decode("latin-1"))
        if name not in self.hosts:
            await _refuse(send, 400, f"Host: {name!r} is not a name this service answers to "
                                     "(allowed: " + ", ".join(sorted(self.hosts)) + "; see --allowed-host)")
            return
        await self.app(scope, receive, send)
