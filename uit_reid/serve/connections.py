"""Connection limits below the app: a cap on open connections and a deadline for each request to arrive.

uvicorn keeps a connection that never sends a request (or sends it a byte at a time) open for
ever, and so does its default HTTP parser with headers of any size; a few hundred such sockets use
up the process's file descriptors and lock every other client out. `guarded_protocol` returns an
HTTP protocol class for uvicorn (its h11 protocol plus three rules):

- a request (head and body) must arrive within ``request_timeout`` seconds of the connection
  opening or of the previous answer; otherwise 408 and the connection is closed;
- request heads larger than ``max_header_bytes`` get 431: h11 stops buffering an incomplete head
  there, and a complete head that arrived in one piece is measured when h11 hands it over;
- at most ``max_connections`` are open: a new one above the cap closes the connection that has
  waited longest without a request in progress, or, when every connection is busy, gets 503.

Every refusal is JSON ``{"error": ...}`` with the service's security headers. After a 400 or 431
the connection is closed gently: the answer is written and the sending side shut, then what the client
still sends is read and dropped for up to `LINGER_SECONDS`, so a client in the middle of sending a
megabytes-long head reads the 431 instead of a TCP reset (which unread data in a closed socket gives).
"""

from __future__ import annotations

import time

import h11
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, H11Protocol

from uit_reid.serve.limits import SECURITY_HEADERS, error_body

__all__ = ["LINGER_SECONDS", "guarded_protocol", "head_bytes", "raw_json_response"]

LINGER_SECONDS = 2.0
"""How long a refused connection's incoming bytes are read and dropped before it is closed."""

_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}

_REQUEST_IN = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)  # the client's side of the request is complete


def head_bytes(request: h11.Request) -> int:
    """The size of a parsed request head as it came on the wire (request line, headers, blank line)."""
    line = len(request.method) + len(request.target) + len(b"HTTP/") + len(request.http_version) + 4
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items()) + 2


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
        self._lingering = False
        self._head_too_large = False
        self._limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        parse = self.conn.next_event

        def next_event():  # every parsed head is measured, pipelined ones too
            event = parse()
            if isinstance(event, h11.Request) and head_bytes(event) > self._limit:
                self._head_too_large = True
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
            return event

        self.conn.next_event = next_event
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

    def _refuse(self, status: int, message: str, linger: bool = False) -> None:
        self._cancel_deadline()
        self._waiting_since = None
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app's own answer, if any, is dropped
        self.transport.write(raw_json_response(status, message))
        if linger and self.transport.can_write_eof():
            self._lingering = True
            self.transport.write_eof()  # the answer, then end of stream; reading goes on (dropped)
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # a refused request's remaining bytes
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
        if self._head_too_large or len(self.conn.trailing_data[0]) > self._limit:
            self._refuse(431, f"request headers too large: at most {self._limit} bytes", linger=True)
        else:
            self._refuse(400, "not a valid HTTP/1.1 request", linger=True)


def guarded_protocol(*, max_connections: int, request_timeout: float) -> type[H11Protocol]:
    """The protocol class to give uvicorn as ``http=`` (set ``h11_max_incomplete_event_size`` for the head cap)."""
    if max_connections < 1:
        raise ValueError(f"max_connections must be 1 or more, got {max_connections}")
    if not 0 < request_timeout < float("inf"):
        raise ValueError(f"request_timeout must be a positive number of seconds, got {request_timeout}")
    return type("GuardedH11Protocol", (_GuardedH11Protocol,),
                {"max_connections": int(max_connections), "request_timeout": float(request_timeout)})
