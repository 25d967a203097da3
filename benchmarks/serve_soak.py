"""Soak under hostile clients: a real `uit-reid serve` on loopback, attacked while 64 clients search.

For ``--seconds`` (60) at once, all against 127.0.0.1 only:

- ``--clients`` (64) well-behaved clients search in a closed loop (``GET /search?q=...&k=10``), each
  on its own keep-alive connection, opening a new one when the server closes theirs; a request
  counts as a success on a 200 with k results within ``--request-timeout-s`` (10 s);
- ``--idle`` (1,100) sockets are opened and never send a byte (re-opened when the server closes them);
- ``--slowloris`` (100) sockets send one header line a second and never finish the head;
- ``--floods`` (4) connections each send up to ``--flood-mb`` (64) MiB of header bytes, then start over.

The server runs with its open-file limit at ``--nofile`` (1,024, a common default), so the idle
sockets alone are more than it may open. Reported: the server's resident memory (start, peak, end,
sampled every 0.5 s from /proc), the good clients' success rate, p50/p99 latency and requests/s, and
whether the server was still alive. Every attacker loop is bounded by the deadline and a count.

``--source DIR`` runs the server from another checkout (``git archive main | tar -x -C DIR``) for
a before/after comparison; the clients are this script's.

    python benchmarks/serve_soak.py                                 # this checkout, 60 s
    python benchmarks/serve_soak.py --source /tmp/before --json before.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from serve import build_gallery, queries, read_answer  # noqa: E402  (benchmarks/serve.py)

from uit_reid.serve.process import free_port, serve_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # the only target this script ever connects to


# ---------------------------------------------------------------------------------------- server
def start_server(gallery: dict[str, Path], source: Path, nofile: int, log: Path) -> tuple[subprocess.Popen, int]:
    """`uit-reid serve` from ``source`` with the rate limit off and RLIMIT_NOFILE at ``nofile``."""
    port = free_port(HOST)
    args = ["--index", str(gallery["index"]), "--model", str(gallery["model"]), "--device", "cpu",
            "--rate-limit", "0"]
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        # cwd=source: `python -m` puts the working directory first on sys.path, before PYTHONPATH
        proc = subprocess.Popen(serve_command(args, port), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=source,
                                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2):  # noqa: S310 (loopback)
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")


def _server_code(source: Path) -> str:
    """Which commit the server ran (``git archive`` copies carry none: then the folder)."""
    run = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return run.stdout.strip() if run.returncode == 0 else f"a copy at {source}"


def rss_mb(pid: int) -> float:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(found.group(1)) / 1024 if found else float("nan")


# ---------------------------------------------------------------------------------------- clients
async def good_client(port: int, paths: list[str], k: int, deadline: float, timeout: float,
                      results: list[tuple[bool, float]]) -> None:
    """Search until the deadline on one keep-alive connection (a new one after a failure)."""
    conn = None
    i = 0
    while time.monotonic() < deadline and i < 1_000_000:
        path = paths[i % len(paths)]
        i += 1
        start = time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
            reader, writer = conn
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            status, body = await asyncio.wait_for(read_answer(reader), timeout)
            ok = status == 200 and len(json.loads(body)["results"][0]["results"]) == k
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            ok = False
        results.append((ok, time.perf_counter() - start))
        if not ok and conn is not None:
            conn[1].close()
            conn = None
            await asyncio.sleep(0.05)
    if conn is not None:
        conn[1].close()


async def idle_socket(port: int, deadline: float, stats: dict[str, int]) -> None:
    """A connection that never sends a byte; opened again 0.5 s after the server closes it."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
            stats["idle_opened"] += 1
        except (OSError, asyncio.TimeoutError):
            stats["idle_refused"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            await asyncio.wait_for(_watch_close(reader, writer), max(0.01, deadline - time.monotonic()))
            stats["idle_closed"] += 1
        except asyncio.TimeoutError:
            writer.close()
        await asyncio.sleep(0.5)


async def _watch_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Drain what the server says; close our side when it hangs up."""
    try:
        while await reader.read(65536):
            pass
    except OSError:
        pass
    writer.close()


async def _open_head(port: int) -> tuple[asyncio.StreamWriter, asyncio.Task] | None:
    """A connection with a request line and Host sent (the head left open) and a task that sees it close."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
    except (OSError, asyncio.TimeoutError):
        await asyncio.sleep(1)
        return None
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n".encode())
    return writer, asyncio.ensure_future(_watch_close(reader, writer))


async def slowloris(port: int, deadline: float, stats: dict[str, int]) -> None:
    """One header line a second, never the blank line that ends the head; reconnect when cut off."""
    while time.monotonic() < deadline:
        if (opened := await _open_head(port)) is None:
            continue
        writer, watcher = opened
        lines = 0
        while time.monotonic() < deadline and not writer.is_closing() and lines < 3600:
            await asyncio.sleep(1)
            try:
                writer.write(f"X-Slow-{lines}: {random.random()}\r\n".encode())
                await writer.drain()
            except OSError:
                break
            lines += 1
        stats["slowloris_cut_off"] += int(time.monotonic() < deadline)
        writer.close()
        watcher.cancel()


async def header_flood(port: int, deadline: float, flood_bytes: int, stats: dict[str, int]) -> None:
    """Send up to ``flood_bytes`` of header lines on one connection, then start over."""
    chunk = b"".join(b"X-Flood-%d: " % i + b"a" * 1000 + b"\r\n" for i in range(64))  # 64 KiB of lines
    while time.monotonic() < deadline:
        if (opened := await _open_head(port)) is None:
            continue
        writer, watcher = opened
        sent = 0
        while sent < flood_bytes and time.monotonic() < deadline and not watcher.done():
            try:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), max(0.01, deadline - time.monotonic()))
            except (OSError, asyncio.TimeoutError):  # hung up on, or the deadline passed mid-send
                break
            sent += len(chunk)
        await asyncio.sleep(0.2)  # a refusal arrives just after the last bytes were taken
        stats["flood_mb_sent"] += sent >> 20
        stats["flood_cut_off"] += int(watcher.done() and time.monotonic() < deadline)
        writer.close()
        watcher.cancel()
        await asyncio.sleep(0.1)


async def soak(port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    paths = [f"/search?q={quote(t)}&k={args.k}" for t in queries(200)]
    deadline = time.monotonic() + args.seconds
    stats = dict.fromkeys(["idle_opened", "idle_closed", "idle_refused", "slowloris_cut_off", "flood_mb_sent",
                           "flood_cut_off"], 0)
    results: list[tuple[bool, float]] = []
    memory: list[float] = []

    async def sample_memory() -> None:
        while time.monotonic() < deadline:
            memory.append(rss_mb(pid))
            await asyncio.sleep(0.5)

    attackers = [idle_socket(port, deadline, stats) for _ in range(args.idle)]
    attackers += [slowloris(port, deadline, stats) for _ in range(args.slowloris)]
    attackers += [header_flood(port, deadline, args.flood_mb << 20, stats) for _ in range(args.floods)]
    start = time.monotonic()
    tasks = [asyncio.ensure_future(a) for a in (*attackers, sample_memory())]
    await asyncio.sleep(min(3.0, args.seconds / 4))  # let the attack build up before the clients start
    await asyncio.gather(*(good_client(port, paths[i::args.clients], args.k, deadline, args.request_timeout_s,
                                       results) for i in range(args.clients)))
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    ok = [t for good, t in results if good]
    ms = np.array(ok) * 1000.0 if ok else np.array([float("nan")])
    return {
        "seconds": time.monotonic() - start, "requests": len(results), "succeeded": len(ok),
        "success_rate": len(ok) / len(results) if results else 0.0,
        "ok_per_s": len(ok) / max(1e-9, args.seconds - min(3.0, args.seconds / 4)),
        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
        "rss_mb_start": memory[0] if memory else None, "rss_mb_peak": max(memory) if memory else None,
        "rss_mb_end": memory[-1] if memory else None, **stats,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--idle", type=int, default=1100)
    ap.add_argument("--slowloris", type=int, default=100)
    ap.add_argument("--floods", type=int, default=4)
    ap.add_argument("--flood-mb", type=int, default=64)
    ap.add_argument("--nofile", type=int, default=1024, help="the server's open-file limit")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--request-timeout-s", type=float, default=10.0, help="a good request slower than this failed")
    ap.add_argument("--num-ids", type=int, default=100)
    ap.add_argument("--source", type=Path, default=ROOT, help="the checkout the server runs from")
    ap.add_argument("--index", type=Path, default=None)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not 1 <= args.seconds <= 600 or args.idle > 5000 or args.clients > 512:
        ap.error("bounded on purpose: --seconds 1..600, --idle <= 5000, --clients <= 512")
    need = args.idle + args.clients + args.slowloris + args.floods + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))  # this script's own sockets
    with tempfile.TemporaryDirectory() as tmp:
        gallery = ({"index": args.index, "model": args.model} if args.index
                   else build_gallery(Path(tmp), args.num_ids))
        proc, port = start_server(gallery, args.source.resolve(), args.nofile, Path(tmp) / "serve.log")
        load_before = os.getloadavg()
        try:
            report = asyncio.run(soak(port, proc.pid, args))
            report["server_alive"] = proc.poll() is None
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    report.update(source=str(args.source), server_code=_server_code(args.source), machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
                  load_before=[round(x, 2) for x in load_before], load_after=[round(x, 2) for x in os.getloadavg()],
                  settings={k: v for k, v in vars(args).items() if k not in ("index", "model", "json", "source")})
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
