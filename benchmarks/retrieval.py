"""Retrieval benchmark: exact metrics at scale and gallery index search, printed as one Markdown table.

Part 1 compares ``uit_reid.retrieval.evaluate`` with the standard full-argsort evaluator (written
below: argsort every row, gather pids, cumulative sums) on (queries x gallery) similarity matrices.
Each evaluator runs in a fresh child process; "peak extra memory" is the peak resident memory of that
process above its level right after the similarity matrix was built (Linux ``clear_refs``/VmHWM).

Part 2 searches clustered, L2-normalised 512-d vectors with 1,000 queries: torch matmul + topk
(blocked over the gallery), GalleryIndex flat / ivf / hnsw. Recall@10 is against exact results. The
data: n / 100 random Gaussian centres, points = centre + 0.65 * Gaussian noise, then normalised.

    python benchmarks/retrieval.py                 # full run (about 15 minutes on 2 cores)
    python benchmarks/retrieval.py --quick         # small sizes, a minute
    python benchmarks/retrieval.py --eval-sizes 6156x3074 --index-sizes 100000 --hnsw-max 100000
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import multiprocessing as mp
import os
import platform
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from uit_reid.retrieval import GalleryIndex, evaluate  # noqa: E402


# ----------------------------------------------------------------------------------------- part 1
def reference_evaluate(sim: torch.Tensor, qp: torch.Tensor, gp: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """The standard evaluator: full stable argsort of every row, then metrics from the match matrix."""
    order = torch.argsort(sim, dim=1, descending=True, stable=True)
    matches = gp[order] == qp[:, None]
    del order
    n_rel = matches.sum(1)
    cum = matches.cumsum(1)
    out = {f"R{k}": 100.0 * (cum[:, k - 1] > 0).double().mean().item() for k in ks}
    pos = torch.arange(1, sim.shape[1] + 1, dtype=torch.float64)
    ap = ((cum / pos) * matches).sum(1) / n_rel
    del cum
    last = sim.shape[1] - 1 - torch.argmax(matches.flip(1).to(torch.uint8), dim=1)
    out["mAP"] = 100.0 * ap.mean().item()
    out["mINP"] = 100.0 * (n_rel / (last + 1)).double().mean().item()
    return out


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def make_similarity(nq: int, ng: int, num_ids: int, seed: int = 0):
    """Gallery pids spread over ``num_ids`` identities, queries drawn from gallery pids; sim = noise +
    a boost for matching pairs, so the metrics are in a realistic range and values are continuous."""
    g = torch.Generator().manual_seed(seed)
    gp = torch.arange(ng) % num_ids
    qp = gp[torch.randint(0, ng, (nq,), generator=g)]
    sim = torch.randn(nq, ng, generator=g)
    for s in range(0, nq, 1024):
        sim[s : s + 1024] += 2.5 * (qp[s : s + 1024, None] == gp[None, :])
    return sim, qp, gp


def _eval_child(method: str, nq: int, ng: int, num_ids: int, queue: Any) -> None:
    # large allocations straight from mmap, so freed heap memory does not hide the peak
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB
    sim, qp, gp = make_similarity(nq, ng, num_ids)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak-RSS watermark
        fh.write("5")
    base = _rss_kib("VmRSS")
    t = time.perf_counter()
    res = reference_evaluate(sim, qp, gp) if method == "argsort" else evaluate(sim, qp, gp)
    dt = time.perf_counter() - t
    queue.put((dt, (_rss_kib("VmHWM") - base) / 1024, res))


def run_eval(method: str, nq: int, ng: int, num_ids: int) -> tuple[float, float, dict]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_eval_child, args=(method, nq, ng, num_ids, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


# ----------------------------------------------------------------------------------------- part 2
def clustered(n: int, dim: int, centers: torch.Tensor, spread: float, seed: int) -> np.ndarray:
    """Points around random cluster centres, L2-normalised (float32, built in chunks)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        c = torch.randint(0, centers.shape[0], (m,), generator=g)
        out[s : s + m] = centers[c] + spread * torch.randn(m, dim, generator=g)
    out /= out.norm(dim=1, keepdim=True)
    return out.numpy()


def torch_topk(xb: torch.Tensor, xq: torch.Tensor, k: int, block: int = 65536):
    """Exact search with torch: matmul against gallery blocks, topk per block, merge."""
    best_v = best_i = None
    for s in range(0, xb.shape[0], block):
        v, i = (xq @ xb[s : s + block].T).topk(k, dim=1)
        i += s
        if best_v is not None:
            v, j = torch.cat([best_v, v], 1).topk(k, dim=1)
            i = torch.cat([best_i, i], 1).gather(1, j)
        best_v, best_i = v, i
    return best_v.numpy(), best_i.numpy()


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def run_index(n: int, args: argparse.Namespace, rows: list[list[str]]) -> None:
    dim, nq, k = 512, args.queries, 10
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(max(1, n // args.points_per_cluster), dim, generator=g)
    xb = clustered(n, dim, centers, args.spread, seed=2)
    xq = clustered(nq, dim, centers, args.spread, seed=3)
    label = f"{n:,} x 512"
    tb, tq = torch.from_numpy(xb), torch.from_numpy(xq)
    t = time.perf_counter()
    _, exact = torch_topk(tb, tq, k)
    dt = time.perf_counter() - t
    exact_qps = nq / dt
    rows.append(["index", label, "torch matmul+topk", "0", f"{nq / dt:,.0f}", "1.000", "1.0x"])

    def measure(name: str, index: GalleryIndex, build_s: float) -> None:
        t = time.perf_counter()
        _, ids = index.search(xq, k)
        dt = time.perf_counter() - t
        rows.append(
            [
                "index",
                label,
                name,
                f"{build_s:.1f}",
                f"{nq / dt:,.0f}",
                f"{recall_at(ids, exact):.3f}",
                f"{nq / dt / exact_qps:.1f}x",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)

    ids = np.arange(n, dtype=np.int64)
    t = time.perf_counter()
    flat = GalleryIndex(dim, "flat")
    flat.add(xb, ids)
    measure("GalleryIndex flat (faiss, exact)", flat, time.perf_counter() - t)
    del flat
    gc.collect()

    t = time.perf_counter()
    ivf = GalleryIndex(dim, "ivf")
    ivf.add(xb, ids)
    build = time.perf_counter() - t
    for nprobe in args.nprobes:
        if nprobe <= ivf.nlist:
            ivf.nprobe = nprobe
            measure(f"GalleryIndex ivf nlist={ivf.nlist} nprobe={nprobe}", ivf, build)
    del ivf
    gc.collect()

    if n <= args.hnsw_max:
        t = time.perf_counter()
        hnsw = GalleryIndex(dim, "hnsw")
        hnsw.add(xb, ids)
        build = time.perf_counter() - t
        for ef in args.efs:
            hnsw.ef_search = ef
            measure(f"GalleryIndex hnsw M=32 efC=80 ef={ef}", hnsw, build)
        del hnsw
        gc.collect()
    else:
        rows.append(
            ["index", label, "hnsw", "skipped", "-", "-", f"build > {args.hnsw_max:,} vectors left out"]
        )


def parse_size(text: str) -> tuple[int, int]:
    q, g = text.lower().split("x")
    return int(q), int(g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--eval-sizes", nargs="*", type=parse_size, default=[(6156, 3074), (20000, 20000)])
    p.add_argument("--num-ids", type=int, default=1000, help="identities in the evaluate benchmark")
    p.add_argument("--index-sizes", nargs="*", type=int, default=[100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--points-per-cluster", type=int, default=100, help="gallery size / cluster count")
    p.add_argument("--spread", type=float, default=0.65, help="cluster noise std relative to centre std")
    p.add_argument("--nprobes", nargs="*", type=int, default=[4, 8, 16, 32, 64])
    p.add_argument("--efs", nargs="*", type=int, default=[32, 64, 128])
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest gallery to build HNSW for")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-argsort", action="store_true", help="skip the slow reference evaluator")
    args = p.parse_args()
    if args.quick:
        args.eval_sizes, args.index_sizes, args.queries = [(2000, 1000)], [20_000], 200
        args.nprobes, args.efs = [4, 16], [32, 64]
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    rows: list[list[str]] = []
    for nq, ng in args.eval_sizes:
        label = f"{nq:,} x {ng:,}"
        ours = run_eval("ours", nq, ng, args.num_ids)
        if not args.skip_argsort:
            ref = run_eval("argsort", nq, ng, args.num_ids)
            diff = max(abs(ours[2][m] - ref[2][m]) for m in ours[2])
            rows.append(
                [
                    "evaluate",
                    label,
                    "full argsort (reference)",
                    "-",
                    f"{ref[0]:.2f} s",
                    f"{ref[1]:,.0f} MiB",
                    "1.0x",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
            speed = f"{ref[0] / ours[0]:.1f}x (max diff {diff:.1e})"
        else:
            speed = "-"
        rows.append(
            ["evaluate", label, "uit_reid evaluate", "-", f"{ours[0]:.2f} s", f"{ours[1]:,.0f} MiB", speed]
        )
        print(" | ".join(rows[-1]), flush=True)
    for n in args.index_sizes:
        run_index(n, args, rows)

    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads={args.threads}, "
        f"torch {torch.__version__}, faiss {faiss.__version__}"
    )
    print("| part | size | method | build s | time / queries/s | peak extra mem / recall@10 | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
