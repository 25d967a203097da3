"""Service load test: a real `uit-reid serve` process on loopback, 1 / 8 / 64 concurrent clients.

The gallery: `uit-reid synth` images indexed (`uit-reid index build`) with a `uit-tiny` model of
random weights saved with `save_pretrained` (throughput does not depend on what the weights learnt).
Each row sends a fixed number of ``GET /search?q=...&k=10`` requests, split evenly over N clients
that each keep one HTTP/1.1 connection open (opened before the clock starts) and send their next
request when the answer arrives (a closed loop). Queries are distinct descriptions, cycled. Every answer is checked: status 200 and
``k`` results. Queries/s is requests / wall time of the row; latency is per request at the client.
``mean batch`` is the mean number of queries per text-encoder call during the row (from ``/stats``).

The client is a small asyncio HTTP/1.1 client, so that its own cost (it shares the machine with the
server) stays far below the server's. Rows run once per service configuration: the default
micro-batching (``--max-batch 64 --batch-wait-ms 2``) and no batching (``--max-batch 1``).

    python benchmarks/serve.py                       # 2,000 requests per row
    python benchmarks/serve.py --requests 500        # quicker
    python benchmarks/serve.py --json out.json       # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from uit_reid.serve.process import ServeProcess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

_COLOURS = ["red", "blue", "black", "white", "green", "grey", "yellow", "brown", "pink", "purple"]
_TOPS = ["jacket", "t-shirt", "coat", "sweater", "shirt", "hoodie"]
_BOTTOMS = ["jeans", "trousers", "shorts", "skirt"]
_PEOPLE = ["man", "woman", "young man", "young woman", "person", "boy", "girl"]
_CARRY = ["a black backpack", "a white bag", "an umbrella", "nothing in the hands", "a phone"]


def queries(n: int) -> list[str]:
    """``n`` distinct pedestrian descriptions of varying length (deterministic)."""
    rng = np.random.default_rng(0)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        who, top, c1, bottom, c2, carry = (
            rng.choice(_PEOPLE), rng.choice(_TOPS), rng.choice(_COLOURS),
            rng.choice(_BOTTOMS), rng.choice(_COLOURS), rng.choice(_CARRY),
        )
        text = f"a {who} in a {c1} {top} and {c2} {bottom}"
        if rng.random() < 0.5:
            text += f", carrying {carry}, walking along the street"
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


# --------------------------------------------------------------------------------------- gallery
def build_gallery(work: Path, num_ids: int) -> dict[str, Path]:
    """Synthetic images, a random-weight `uit-tiny` model and its index under ``work``."""
    from uit_reid.cli import main
    from uit_reid.factory import build_model
    from uit_reid.train.config import LossConfig, ModelConfig

    data, model_dir, index = work / "data", work / "model", work / "gallery.faiss"
    if not index.exists():
        torch.manual_seed(0)
        assert main(["synth", "--out", str(data), "--num-ids", str(num_ids), "--images-per-id", "2",
                     "--num-val-ids", "4", "--num-test-ids", "4"]) == 0
        model = build_model(ModelConfig(tower="uit-tiny", pretrained="none", image_size=(96, 32), tir_head=False),
                            LossConfig(), num_classes=num_ids)
        model.save_pretrained(model_dir)
        assert main(["index", "build", "--model", str(model_dir), "--images", str(data / "imgs"),
                     "--out", str(index), "--device", "cpu"]) == 0
    return {"index": index, "model": model_dir}


# ---------------------------------------------------------------------------------------- server
def start_service(gallery: dict[str, Path], log: Path, extra: list[str], env: dict[str, str]) -> ServeProcess:
    """A `uit-reid serve` process over ``gallery`` with the rate limit off."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    args = ["--index", str(gallery["index"]), "--model", str(gallery["model"]), "--device", "cpu",
            "--rate-limit", "0", "--max-k", "100", *extra]
    return ServeProcess(args, log=log, env={**os.environ, **env, "PYTHONPATH": path})


# ---------------------------------------------------------------------------------------- client
async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 answer with a Content-Length."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _client(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], host: str, paths: list[str], k: int,
    latencies: list[float],
) -> None:
    """Send ``paths`` one after another on one keep-alive connection; every answer is checked."""
    reader, writer = connection
    for path in paths:
        start = time.perf_counter()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status, body = await read_answer(reader)
        latencies.append(time.perf_counter() - start)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {body[:200]!r}")
        if len(json.loads(body)["results"][0]["results"]) != k:
            raise RuntimeError(f"{path} did not answer {k} results")


async def _load(port: int, texts: list[str], clients: int, requests: int, k: int) -> tuple[float, list[float]]:
    """Open ``clients`` connections, then time ``requests`` searches spread evenly over them."""
    paths = [f"/search?q={quote(t)}&k={k}" for t in itertools.islice(itertools.cycle(texts), requests)]
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
    latencies: list[float] = []
    try:
        start = time.perf_counter()
        await asyncio.gather(*(_client(conn, f"127.0.0.1:{port}", paths[i::clients], k, latencies)
                               for i, conn in enumerate(connections)))
        return time.perf_counter() - start, latencies
    finally:
        for _, writer in connections:
            writer.close()


def run_row(service: ServeProcess, texts: list[str], clients: int, requests: int, k: int) -> dict[str, Any]:
    """Send ``requests`` searches over ``clients`` connections; throughput, latency and batching."""
    before = service.get_json("/stats")
    wall, lat = asyncio.run(_load(service.port, texts, clients, requests, k))
    after = service.get_json("/stats")
    batches = after["batches"] - before["batches"]
    served = after["queries_served"] - before["queries_served"]
    ms = np.array(lat) * 1000.0
    return {
        "clients": clients, "requests": requests, "queries_per_s": requests / wall,
        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
        "mean_batch": served / batches if batches else 0.0,
    }


# ------------------------------------------------------------------------------------------ main
# name -> (label in the table, extra serve arguments, extra environment of the server process)
CONFIGS: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "default": ("micro-batching (default)", [], {}),
    "no-batching": ("no batching (`--max-batch 1`)", ["--max-batch", "1"], {}),
    "one-thread": ("micro-batching, `OMP_NUM_THREADS=1`", [], {"OMP_NUM_THREADS": "1"}),
}


def measure(gallery: dict[str, Path], log: Path, extra: list[str], env: dict[str, str], levels: list[int],
            requests: int, repeats: int, warmup: int, k: int) -> list[dict[str, Any]]:
    """One service; for each concurrency level the repetition with the median throughput."""
    texts = queries(500)
    rows = []
    with start_service(gallery, log, extra, env) as service:
        size = service.get_json("/stats")["index_size"]
        run_row(service, texts, max(levels), warmup, k)
        for clients in levels:
            runs = sorted((run_row(service, texts, clients, requests, k) for _ in range(repeats)),
                          key=lambda r: r["queries_per_s"])
            rows.append({"index_size": size, **runs[len(runs) // 2],
                         "queries_per_s_runs": [round(r["queries_per_s"], 1) for r in runs]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per row")
    ap.add_argument("--clients", default="1,8,64", help="comma-separated concurrency levels")
    ap.add_argument("--repeats", type=int, default=3, help="runs per row; the median-throughput run is reported")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated service configurations to run")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--num-ids", type=int, default=100, help="synthetic identities in the gallery (2 images each)")
    ap.add_argument("--warmup", type=int, default=200, help="requests before each configuration's rows")
    ap.add_argument("--index", type=Path, default=None, help="serve this index (with --model) instead of building one")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--goal", type=float, default=4.0,
                    help="exit 1 unless the default service at the most clients reaches this multiple of 1 client")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    levels = sorted(int(c) for c in args.clients.split(","))
    names = [n.strip() for n in args.configs.split(",")]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"--configs: unknown configuration {unknown[0]!r}; known: {', '.join(CONFIGS)}")
    if (args.index is None) != (args.model is None):
        ap.error("--index and --model go together")

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="uit_serve_bench_") as tmp:
        work = Path(tmp)
        gallery = ({"index": args.index, "model": args.model} if args.index
                   else build_gallery(work, args.num_ids))
        for name in names:
            label, extra, env = CONFIGS[name]
            for row in measure(gallery, work / "serve.log", extra, env, levels, args.requests, args.repeats,
                               args.warmup, args.k):
                rows.append({"service": name, "label": label, **row})
                print(json.dumps(rows[-1]), flush=True)

    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
               f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}, python {platform.python_version()}")
    print(f"\nmachine: {machine}; load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"gallery: {rows[0]['index_size']} images, k={args.k}, {args.requests} requests per row, "
          f"median of {args.repeats} runs\n")
    print("| service | clients | queries/s | p50 ms | p99 ms | mean batch | vs 1 client |")
    print("|---|---|---|---|---|---|---|")
    ratio = None
    for name in names:
        mine = [r for r in rows if r["service"] == name]
        base = next((r["queries_per_s"] for r in mine if r["clients"] == 1), None)
        for r in mine:
            gain = f"{r['queries_per_s'] / base:.1f}x" if base else "-"
            print(f"| {r['label']} | {r['clients']} | {r['queries_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                  f"| {r['mean_batch']:.1f} | {gain} |")
        if name == names[0] and base and len(mine) > 1:
            ratio = mine[-1]["queries_per_s"] / base
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "ratio": ratio, "goal": args.goal, "rows": rows}, indent=2))
    if ratio is not None:
        ok = ratio >= args.goal
        print(f"\n{CONFIGS[names[0]][0]}: {levels[-1]} clients reach {ratio:.1f}x the 1-client throughput "
              f"(goal {args.goal:g}x): {'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
