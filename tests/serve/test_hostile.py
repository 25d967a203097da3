"""Hostile clients against a real `uit-reid serve` process, spoken to over raw loopback sockets.

Idle sockets, slowloris, header floods, a foreign Host header, forged X-Forwarded-For and bad flags:
each once held sockets open for ever, buffered without bound, reached the service from a web page
or turned a limit off (issue 20). Every server here is started with ``--port 0`` and found through
the port its log prints, so the printed port is the bound one.
"""

from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import ROOT, serve_command, serve_env
from uit_reid.cli import main
from uit_reid.serve import ServeLimits

TIMEOUT = 30
REQUEST_TIMEOUT = 2.0  # --request-timeout of the servers here: the hostile tests wait about this long


class LoggedServer:
    """`uit-reid serve --port 0 EXTRA` whose port is read from its own log line."""

    def __init__(self, gallery, name: str, *extra: str, nofile: int | None = None) -> None:
        self.log = gallery["base"] / f"{name}.log"
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(serve_command(gallery, 0, *extra), stdout=out, stderr=subprocess.STDOUT,
                                         env=serve_env(), cwd=ROOT, preexec_fn=limit)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", self.log.read_text())
            if found:
                self.port = int(found.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"serve did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def guarded(gallery) -> Iterator[LoggedServer]:
    """A server whose open-file limit is 256: the default connection cap drops to 192 to fit."""
    srv = LoggedServer(gallery, "guarded", "--request-timeout", str(REQUEST_TIMEOUT), "--rate-limit", "1000",
                       "--burst", "1000", "--max-header-bytes", "4096", nofile=256)
    yield srv
    srv.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def read_answer(sock: socket.socket, timeout: float = TIMEOUT) -> tuple[int | None, dict[str, str], bytes]:
    """Status, headers and body of what the server writes before it closes (None: closed without a word)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    if not data:
        return None, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def assert_json_refusal(answer, status: int, message: str) -> None:
    code, headers, body = answer
    assert code == status, answer
    assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert message in json.loads(body)["error"], body


def healthz_ms(url: str) -> float:
    start = time.monotonic()
    r = httpx.get(url + "/healthz", timeout=10)
    assert r.status_code == 200, r.text
    return (time.monotonic() - start) * 1000


# ------------------------------------------------------------------------------------ finding 1
def test_idle_sockets_beyond_the_file_limit_do_not_lock_others_out(guarded) -> None:
    """300 silent sockets against a process that may open 256 files: others are still served at once."""
    idle = [connect(guarded.port) for _ in range(300)]
    try:
        assert healthz_ms(guarded.url) < 5000
        with httpx.Client(timeout=10) as client:  # and the search itself, on a connection of its own
            assert client.get(guarded.url + "/search", params={"q": "a man", "k": 2}).status_code == 200
        # the longest-idle were closed to make room (no answer), the rest at the request deadline (408)
        answers = [read_answer(s, timeout=REQUEST_TIMEOUT + 10) for s in idle]
    finally:
        for s in idle:
            s.close()
    closed_silently = [a for a in answers if a[0] is None]
    timed_out = [a for a in answers if a[0] is not None]
    assert len(closed_silently) >= 300 - 192 and timed_out, (len(closed_silently), len(timed_out))
    for answer in timed_out:
        assert_json_refusal(answer, 408, f"the request did not arrive within {REQUEST_TIMEOUT:g} s")
    assert guarded.proc.poll() is None


def test_slowloris_gets_408_at_the_request_deadline(guarded) -> None:
    """A head sent a few bytes at a time never completes: the deadline runs from the first byte, not the last."""
    sock = connect(guarded.port)
    start = time.monotonic()
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with pytest.raises(OSError):  # BrokenPipe or ConnectionReset once the server has hung up
            for i in range(100):  # bounded: 100 x 0.25 s at most
                sock.sendall(f"X-{i}: 1\r\n".encode())
                time.sleep(0.25)
        answer = read_answer(sock)
    finally:
        sock.close()
    elapsed = time.monotonic() - start
    assert REQUEST_TIMEOUT - 0.1 <= elapsed < REQUEST_TIMEOUT + 3, elapsed
    assert_json_refusal(answer, 408, "the request did not arrive within 2 s")


def test_a_slow_body_gets_408_too(guarded) -> None:
    sock = connect(guarded.port)
    try:
        sock.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000\r\n\r\n{\"queries\": [")
        answer = read_answer(sock, timeout=REQUEST_TIMEOUT + 10)
    finally:
        sock.close()
    assert_json_refusal(answer, 408, "the request did not arrive within 2 s")


@pytest.mark.parametrize("flood", [b"X-Big: " + b"a" * 200_000 + b"\r\n", b"X-Small: 1\r\n" * 20_000],
                         ids=["one-huge-header", "many-small-headers"])
def test_header_floods_get_431_after_max_header_bytes(guarded, flood) -> None:
    sock = connect(guarded.port)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            for start in range(0, len(flood), 8192):  # the server hangs up part-way
                sock.sendall(flood[start:start + 8192])
        except OSError:
            pass
        answer = read_answer(sock)
    finally:
        sock.close()
    assert_json_refusal(answer, 431, "request headers too large: at most 4096 bytes")
    assert healthz_ms(guarded.url) < 5000


@pytest.mark.parametrize("size", [4097, 8_000, 27_000])
def test_a_whole_head_over_the_limit_in_one_piece_gets_431(guarded, size) -> None:
    """h11 limits only heads it is still waiting for: one that arrives complete is measured too (issue 29)."""
    start = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
    head = start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == size
    sock = connect(guarded.port)
    try:
        sock.sendall(head)
        answer = read_answer(sock)
    finally:
        sock.close()
    assert_json_refusal(answer, 431, "request headers too large: at most 4096 bytes")


def test_a_head_at_the_limit_is_answered(guarded) -> None:
    start = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
    head = start + b"a" * (4096 - len(start) - 4) + b"\r\n\r\n"
    sock = connect(guarded.port)
    try:
        sock.sendall(head)
        sock.settimeout(TIMEOUT)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        sock.close()


@pytest.mark.parametrize("mib", [1, 8])
def test_a_head_of_megabytes_gets_431_not_a_reset(guarded, mib) -> None:
    """The whole flood is sent before the answer is read: the server reads and drops it, then closes."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (mib * 2**20) + b"\r\n\r\n"
    sock = connect(guarded.port)
    try:
        sock.sendall(head)  # raised ConnectionResetError / BrokenPipeError before
        answer = read_answer(sock)
    finally:
        sock.close()
    assert_json_refusal(answer, 431, "request headers too large: at most 4096 bytes")
    assert guarded.proc.poll() is None


def test_keep_alive_connections_answer_several_requests_each_in_time(guarded) -> None:
    """The deadline is re-armed per request: a connection that keeps asking is never cut off."""
    with httpx.Client(timeout=10) as client:
        for _ in range(4):
            assert client.get(guarded.url + "/healthz").status_code == 200
            time.sleep(REQUEST_TIMEOUT / 2)


# ------------------------------------------------------------------------------------ finding 2
@pytest.mark.parametrize("path", ["/search?q=a+man", "/image/0?full=true", "/healthz", "/"])
def test_a_foreign_host_header_is_refused(guarded, path) -> None:
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 sends Host: evil.example."""
    r = httpx.get(guarded.url + path, headers={"host": "evil.example"}, timeout=TIMEOUT)
    assert r.status_code == 400
    assert r.json() == {"error": "Host: 'evil.example' is not a name this service answers to "
                                 "(allowed: 127.0.0.1, ::1, localhost; see --allowed-host)"}
    assert r.headers["x-content-type-options"] == "nosniff"
    for host in (f"127.0.0.1:{guarded.port}", f"localhost:{guarded.port}", f"[::1]:{guarded.port}", "LOCALHOST"):
        assert httpx.get(guarded.url + "/healthz", headers={"host": host}, timeout=TIMEOUT).status_code == 200, host


def test_a_request_without_host_is_refused(guarded) -> None:
    sock = connect(guarded.port)
    try:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        answer = read_answer(sock)
    finally:
        sock.close()
    assert_json_refusal(answer, 400, "Host: the request must carry exactly one Host header")


# ------------------------------------------------------------------------------------ finding 3
def test_forwarded_headers_do_not_buy_new_rate_buckets_and_allowed_host_extends(gallery) -> None:
    srv = LoggedServer(gallery, "forwarded", "--rate-limit", "0.5", "--burst", "3",
                       "--allowed-host", "search.example")
    try:
        codes = [httpx.get(srv.url + "/stats", headers={"x-forwarded-for": f"10.0.0.{i}"}, timeout=TIMEOUT).status_code
                 for i in range(8)]
        assert codes == [200, 200, 200] + [429] * 5
        r = httpx.get(srv.url + "/healthz", headers={"host": "search.example:443"}, timeout=TIMEOUT)
        assert r.status_code == 200
    finally:
        srv.stop()


def test_forwarded_for_is_believed_from_a_named_proxy(gallery) -> None:
    srv = LoggedServer(gallery, "proxied", "--rate-limit", "0.5", "--burst", "3", "--forwarded-allow-ips", "127.0.0.1")
    try:
        codes = [httpx.get(srv.url + "/stats", headers={"x-forwarded-for": f"10.0.0.{i}"}, timeout=TIMEOUT).status_code
                 for i in range(8)]
        assert codes == [200] * 8  # each forwarded client has a bucket of its own
        same = [httpx.get(srv.url + "/stats", headers={"x-forwarded-for": "10.0.1.1"}, timeout=TIMEOUT).status_code
                for _ in range(5)]
        assert same == [200, 200, 200, 429, 429]
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------ finding 5
SERVE = ["serve", "--index", "gallery.faiss", "--model", "model"]
BAD_FLAGS = [
    (["--burst", "0"], "argument --burst: must be 1 or more, got 0"),
    (["--max-body-bytes", "0"], "argument --max-body-bytes: must be 1 or more, got 0"),
    (["--rate-limit", "-1"], "argument --rate-limit: must be 0 or more, got -1"),
    (["--rate-limit", "nan"], "argument --rate-limit: must be a finite number, got nan"),
    (["--rate-limit", "inf"], "argument --rate-limit: must be a finite number, got inf"),
    (["--port", "99999"], "argument --port: must be between 0 and 65535, got 99999"),
    (["--port", "-1"], "argument --port: must be between 0 and 65535, got -1"),
    (["--max-k", "0"], "argument --max-k: must be 1 or more, got 0"),
    (["--max-query-chars", "0"], "argument --max-query-chars: must be 1 or more, got 0"),
    (["--max-batch", "0"], "argument --max-batch: must be 1 or more, got 0"),
    (["--batch-wait-ms", "-2"], "argument --batch-wait-ms: must be 0 or more, got -2"),
    (["--request-timeout", "0"], "argument --request-timeout: must be 1 or more, got 0"),
    (["--keep-alive-timeout", "nan"], "argument --keep-alive-timeout: must be a finite number, got nan"),
    (["--max-header-bytes", "10"], "argument --max-header-bytes: must be 1024 or more, got 10"),
    (["--max-connections", "0"], "argument --max-connections: must be 1 or more, got 0"),
    (["--burst", "1.5"], "argument --burst: '1.5' is not an integer"),
    (["--forwarded-allow-ips", "not-an-ip"], "argument --forwarded-allow-ips: 'not-an-ip' is not an IP address or "
                                             "network (give your proxies' addresses, comma-separated, or '*')"),
    (["--forwarded-allow-ips", "10.0.0.1, 10.0.0.0/33"], "argument --forwarded-allow-ips: '10.0.0.0/33' is not "
                                                         "an IP address or network (give your proxies' addresses, "
                                                         "comma-separated, or '*')"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_are_refused_at_start_naming_the_flag(flags, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*SERVE, *flags])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"uit-reid serve: error: {message}"


def test_more_connections_than_the_file_limit_allows_is_refused(capsys) -> None:
    from uit_reid.serve.server import connection_budget

    too_many = connection_budget() + 1
    assert main([*SERVE, "--max-connections", str(too_many)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"uit-reid: error: --max-connections: {too_many} is more than the open-file limit (ulimit -n) "
        f"leaves room for ({too_many - 1})")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("burst", 0, "burst: must be an integer of 1 or more, got 0"),
    ("rate", float("nan"), "rate: must be a number of 0 or more, got nan"),
    ("rate", -1.0, "rate: must be a number of 0 or more, got -1.0"),
    ("max_body_bytes", 0, "max_body_bytes: must be an integer of 1 or more, got 0"),
    ("max_k", 2.5, "max_k: must be an integer of 1 or more, got 2.5"),
    ("request_timeout", float("inf"), "request_timeout: must be a number of 1 or more, got inf"),
])
def test_serve_limits_refuse_values_out_of_range(field, value, message) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ServeLimits(**{field: value})


def test_the_logged_port_is_the_bound_port(guarded) -> None:
    """Every server in this module was found through its log line; that port answers and is listening."""
    port_hex = f"{guarded.port:04X}"
    listening = [line for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[1].endswith(":" + port_hex) and line.split()[3] == "0A"]
    assert listening and healthz_ms(guarded.url) < 5000
