"""Connection limits below the app: a cap on open connections and a deadline for each request to arrive.

uvicorn keeps a connection that never sends a request (or sends it a byte at a time) open for
ever, and so does its default HTTP parser with headers of any size; a few hundred such sockets use
up the process's file descriptors and lock every other client out. `guarded_protocol` returns an
HTTP protocol class for uvicorn (its h11 protocol plus three rules):

- a request (head and body) must arrive within ``request_timeout`` seconds of the connection
  opening or of the previous answer; otherwise 408 and the connection is closed;
- request heads larger than ``max_header_bytes`` get 431 (h11 stops buffering there);
- at most ``max_connections`` are open: a new one above the cap closes the connection that has
  waited longest without a request in progress, or, when every connection is busy, gets 503.

Every refusal is JSON ``{"error": ...}`` with the service's security headers.
"""

from __future__ import annotations

import time

import h11
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, H11Protocol

from uit_reid.serve.limits import SECURITY_HEADERS, error_body

__all__ = ["guarded_protocol", "raw_json_response"]

_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}

_REQUEST_IN = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)  # the client's side of the request is complete


def raw_json_response(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer ``{"error": message}`` that closes the connection, as bytes on the wire."""
    body = error_body(message)
    head = [f"HTTP/1.1 {status} {_REASONS[status]}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close",
            *(f"{k}: {v}" for k, v in SECURITY_HEADERS.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the request deadline, the head-size answer and the connection cap."""

    max_connections: int = 512
    request_timeout: float = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._waiting_since: float | None = time.monotonic()  # None while a request is being answered
        self._deadline = None
        if len(self.connections) >= self.max_connections and not self._evict_one_idle():
            super().connection_made(transport)
            self._refuse(503, f"too many open connections (at most {self.max_connections}); try again shortly")
            return
        super().connection_made(transport)
        self._arm_deadline()

    def _evict_one_idle(self) -> bool:
        idle = [p for p in self.connections if getattr(p, "_waiting_since", None) is not None
                and not p.transport.is_closing()]
        if not idle:
            return False
        oldest = min(idle, key=lambda p: p._waiting_since)
        oldest._waiting_since = None
        oldest.transport.close()  # connection_lost removes it from the set
        return True

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self._waiting_since = time.monotonic()
        self._deadline = self.loop.call_later(self.request_timeout, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state in _REQUEST_IN:
            return
        if self.cycle is not None and not self.cycle.response_complete and self.cycle.response_started:
            self.transport.close()
            return
        self._refuse(408, f"the request did not arrive within {self.request_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._cancel_deadline()
        self._waiting_since = None
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app's own answer, if any, is dropped
        self.transport.write(raw_json_response(status, message))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in _REQUEST_IN and self._waiting_since is not None:
            self._cancel_deadline()  # the whole request is here: the app takes as long as it takes
            self._waiting_since = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state not in _REQUEST_IN:
            self._arm_deadline()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self._waiting_since = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        if len(self.conn.trailing_data[0]) > limit:
            self._refuse(431, f"request headers too large: at most {limit} bytes")
        else:
            self._refuse(400, "not a valid HTTP/1.1 request")


def guarded_protocol(*, max_connections: int, request_timeout: float) -> type[H11Protocol]:
    """The protocol class to give uvicorn as ``http=`` (set ``h11_max_incomplete_event_size`` for the head cap)."""
    if max_connections < 1:
        raise ValueError(f"max_connections must be 1 or more, got {max_connections}")
    if not 0 < request_timeout < float("inf"):
        raise ValueError(f"request_timeout must be a positive number of seconds, got {request_timeout}")
    return type("GuardedH11Protocol", (_GuardedH11Protocol,),
                {"max_connections": int(max_connections), "request_timeout": float(request_timeout)})
