"""What watching the served files costs a search: `WatchedFiles.reading` around a memory-mapped IVF search.

`uit-reid serve` wraps every batch's index search in `uit_reid.serve.watched.WatchedFiles.reading`
(an ``fstat`` of each watched descriptor before and after, a ``stat`` of each re-opened path, and a
lock), so that a file changed on disk is a 503, never SIGBUS. This measures that cost in one run:
the same memory-mapped index searched with and without the guard, in alternating rounds, for a batch
of 1 query and of 64, with the index file alone watched and with ``--shards`` extra re-opened files
(what ``--rerank`` over that many embedding files adds). Reported: queries/s of each (median round)
and the guard's own time per search.

    python benchmarks/watched_files.py                   # 100,000 x 128 vectors, IVF256,Flat
    python benchmarks/watched_files.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from uit_reid.retrieval import GalleryIndex
from uit_reid.serve.watched import WatchedFile, WatchedFiles


def _rounds(index: GalleryIndex, q: np.ndarray, files: WatchedFiles | None, searches: int) -> float:
    """Queries/s of ``searches`` searches of ``q`` (guarded by ``files`` when given)."""
    start = time.perf_counter()
    for _ in range(searches):
        if files is None:
            index.search(q, 10)
        else:
            with files.reading():
                index.search(q, 10)
    return searches * len(q) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--kind", default="IVF256,Flat")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--searches", type=int, default=200, help="searches per round")
    ap.add_argument("--shards", type=int, default=100, help="extra re-opened files for the second configuration")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gallery.faiss"
        built = GalleryIndex(args.dim, args.kind)
        built.add(rng.standard_normal((args.n, args.dim)).astype(np.float32), np.arange(args.n))
        built.save(path)
        del built
        index = GalleryIndex.load(path, mmap=True)
        shard_paths = []
        for n in range(args.shards):
            shard_paths.append(Path(tmp) / f"img_emb_{n:05d}.npy")
            np.save(shard_paths[-1], np.zeros((2, 2), np.float16))
        configs = {
            "index file": [WatchedFile(p, "index file") for p in index.mapped_files],
            f"index file + {args.shards} re-opened": [
                *(WatchedFile(p, "index file") for p in index.mapped_files),
                *(WatchedFile(p, "embedding file", reopened=True) for p in shard_paths)],
        }
        rows = []
        for name, watched in configs.items():
            files = WatchedFiles(watched)
            leased = files.take_leases()
            for batch in (1, 64):
                q = rng.standard_normal((batch, args.dim)).astype(np.float32)
                _rounds(index, q, None, 20)  # warm the mapped pages
                plain, guarded = [], []
                for _ in range(args.rounds):  # alternating: the machine's load hits both alike
                    plain.append(_rounds(index, q, None, args.searches))
                    guarded.append(_rounds(index, q, files, args.searches))
                start = time.perf_counter()
                for _ in range(10_000):
                    with files.reading():
                        pass
                check_us = (time.perf_counter() - start) / 10_000 * 1e6
                row = {"watched": name, "leases": leased, "batch": batch, "plain_qps": statistics.median(plain),
                       "guarded_qps": statistics.median(guarded), "guard_us_per_search": check_us}
                row["cost_pct"] = 100.0 * (1.0 - row["guarded_qps"] / row["plain_qps"])
                rows.append(row)
                print(f"{name:>28} | batch {batch:>2} | {row['plain_qps']:>9.0f} q/s plain | "
                      f"{row['guarded_qps']:>9.0f} q/s guarded | {row['cost_pct']:+5.1f}% | "
                      f"guard {check_us:.1f} us/search | {leased} leased", flush=True)
            files.close()
    out = {"rows": rows, "n": args.n, "dim": args.dim, "kind": args.kind, "rounds": args.rounds,
           "searches": args.searches, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "load": os.getloadavg()}
    print(json.dumps({"load": out["load"], "machine": out["machine"]}))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
