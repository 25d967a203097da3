"""Large-gallery benchmark: compressed indexes built from embedding shards, on this machine's CPU.

1. Generates ``--n`` clustered unit vectors (a mixture of ``--clusters`` Gaussians, each stretched
   along ``--rank`` directions of its own, with a fixed seed: like real embeddings, not uniform
   noise) shard by shard into an embedding folder (float16, the
   layout `uit-reid encode` writes), plus ``--queries`` held-out queries from the same mixture whose
   exact top-10 is computed by streaming the shards.
2. For each kind: builds the index from the shards in a child process (build time, peak RSS of that
   process), saves it (file size), loads it with and without mmap (load time, in a fresh child each,
   with the file in the page cache), and measures recall@10 against exact search and queries/s of a
   single-threaded batch search at each ``--nprobe`` (IVF kinds; with and without exact re-ranking of
   100 candidates from the shards) or each ef_search (HNSW, built on the first ``--hnsw-n`` vectors).
   With ``--on-disk`` the IVF kinds are built instead as on-disk indexes by ``--ranks`` torchrun
   processes (`uit_reid.retrieval.distributed_build`): peak RSS of each rank while it adds its shards,
   of rank 0's merge, and the time of each phase (train, add, merge).
3. The service's index-side start-up (mmap load, id table, search engine) for the first IVF kind.
4. ``uit-reid encode`` throughput with the tiny model, 1 and 2 torchrun processes (``--encode-images``).

Prints one JSON object and a Markdown table. Usage:

    python benchmarks/scale.py --quick                       # a smoke run, about a minute
    nice -n 5 python benchmarks/scale.py --n 1000000 --work /tmp/scale --json scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from uit_reid.retrieval import EmbeddingShards, GalleryIndex, ShardVectors, default_nlist  # noqa: E402
from uit_reid.retrieval.budget import parse_bytes  # noqa: E402
from uit_reid.retrieval.shards import write_shard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mixture(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """The clusters, fixed by the seed: unit centres and, per cluster, ``--rank`` directions of spread.

    Each cluster is a Gaussian stretched along a few directions of its own (plus a little isotropic
    noise), as real embeddings vary along few attributes. Isotropic 512-d noise would make every
    point of a cluster almost equally far from every other (distances concentrate), so "nearest
    neighbours" would be noise and no compressed index could find them.
    """
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    directions = rng.standard_normal((args.clusters, args.rank, args.dim)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=2, keepdims=True)
    return centres, directions


def sample(clusters: tuple[np.ndarray, np.ndarray], n: int, rng: np.random.Generator, spread: float,
           noise: float = 0.05) -> np.ndarray:
    """``n`` unit vectors: a random cluster's centre + spread along its directions + isotropic noise."""
    centres, directions = clusters
    dim, rank = centres.shape[1], directions.shape[1]
    c = rng.integers(0, len(centres), n)
    z = rng.standard_normal((n, rank)).astype(np.float32) * np.float32(spread / np.sqrt(rank))
    x = centres[c]
    for start in range(0, n, 4096):  # directions[c] of all n rows at once would be n * rank * dim floats
        part = slice(start, start + 4096)
        x[part] += np.einsum("nr,nrd->nd", z[part], directions[c[part]])
    x += rng.standard_normal((n, dim)).astype(np.float32) * np.float32(noise / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def generate(args: argparse.Namespace, folder: Path) -> np.ndarray:
    """Write the gallery shards (if not there yet) and return the queries."""
    centres = mixture(args)
    shards = -(-args.n // args.shard_size)
    if not (folder / "img_emb").is_dir() or len(list((folder / "img_emb").glob("*.npy"))) != shards:
        for s in range(shards):
            rows = min(args.shard_size, args.n - s * args.shard_size)
            rng = np.random.default_rng([args.seed, 1, s])
            vectors = sample(centres, rows, rng, args.spread).astype(np.float16)
            ids = [f"img/{s * args.shard_size + i:09d}.jpg" for i in range(rows)]
            write_shard(folder, s, vectors, ids)
    return sample(centres, args.queries, np.random.default_rng([args.seed, 2]), args.spread)


def exact_top10(shards: EmbeddingShards, queries: np.ndarray, limit: int | None = None) -> np.ndarray:
    """Exact top-10 global rows of each query, streaming the shards (only the first ``limit`` rows)."""
    q = torch.from_numpy(queries)
    best_s = torch.full((len(queries), 0), -torch.inf)
    best_i = torch.zeros((len(queries), 0), dtype=torch.int64)
    for n in range(shards.num_shards):
        start = int(shards.offsets[n])
        if limit is not None and start >= limit:
            break
        x = np.asarray(shards.vectors(n), dtype=np.float32)
        if limit is not None:
            x = x[: limit - start]
        s, i = torch.topk(q @ torch.from_numpy(x).T, min(10, len(x)), dim=1)
        best_s, order = torch.topk(torch.cat([best_s, s], 1), 10, dim=1)
        best_i = torch.gather(torch.cat([best_i, i + start], 1), 1, order)
    return best_i.numpy()


def kept_exact_top10(args: argparse.Namespace, work: Path, shards: EmbeddingShards, queries: np.ndarray) -> np.ndarray:
    """`exact_top10` over all rows, kept in the work folder with ``--keep`` (10M rows: ~5 minutes to recompute)."""
    path, key = work / "exact_top10.npy", work / "exact_top10.json"
    data = {k: getattr(args, k) for k in ("n", "dim", "clusters", "spread", "rank", "shard_size", "queries", "seed")}
    if args.keep and path.exists() and key.exists() and json.loads(key.read_text()) == data:
        return np.load(path)
    exact = exact_top10(shards, queries)
    if args.keep:
        np.save(path, exact)
        key.write_text(json.dumps(data))
    return exact


def recall_at_10(found_rows: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / 10 for f, e in zip(found_rows, exact)]))


def status_mb(field: str, missing: float | None = None) -> float:
    """``field`` (a kB line such as ``VmRSS``) of /proc/self/status in MiB; ``missing`` where the kernel has
    no such line (an error when ``None``)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    if missing is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return missing


def own_peak_rss_mb() -> float:
    """This process's peak resident set (``VmHWM`` of /proc/self/status) in MiB.

    Not ``wait4``'s ``ru_maxrss`` of a child: Linux folds the parent's high-water mark at fork time
    into it (the copied address space is the child's until ``exec``), so a child started by a
    4.4 GB parent reported 4.4 GB whatever it did itself.
    """
    return status_mb("VmHWM")


def child(argv: list[str]) -> tuple[dict[str, Any], float]:
    """Run this script's ``_child`` mode; returns its JSON answer and its own peak RSS in MB (`own_peak_rss_mb`)."""
    proc = subprocess.Popen([sys.executable, __file__, "_child", *argv], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv[:2]} failed with status {proc.returncode}")
    del usage
    answer = json.loads(out.strip().splitlines()[-1])
    return answer, answer["peak_rss_mb"]


def run_child(argv: list[str]) -> None:
    """Child modes: ``build EMB_DIR KIND OUT [LIMIT]`` and ``load OUT MMAP``."""
    from uit_reid.retrieval import build_index_from_shards

    mode = argv[0]
    if mode == "build":
        folder, kind, out = argv[1], argv[2], argv[3]
        limit = int(argv[4]) if len(argv) > 4 else None
        shards = EmbeddingShards(folder)
        start = time.perf_counter()
        if limit is None:
            index = build_index_from_shards(shards, kind, progress=False)
        else:  # HNSW on a subset: the first `limit` rows
            index = GalleryIndex(shards.dim, kind)
            for n in range(shards.num_shards):
                begin = int(shards.offsets[n])
                if begin >= limit:
                    break
                rows = min(shards.rows[n], limit - begin)
                index.add(np.asarray(shards.vectors(n)[:rows], np.float32), shards.ids(n)[:rows])
            index.metadata["embeddings"] = [{"folder": str(Path(folder).resolve()), "first_slot": 0, "rows": len(shards)}]
        build_s = time.perf_counter() - start
        index.save(out)
        print(json.dumps({"build_s": build_s, "factory": index.factory, "peak_rss_mb": own_peak_rss_mb()}))
    elif mode == "ondisk":
        ondisk_rank(argv[1], argv[2], argv[3], int(argv[4]))
    elif mode == "load":
        start = time.perf_counter()
        GalleryIndex.load(argv[1], mmap=argv[2] == "1")
        print(json.dumps({"load_s": time.perf_counter() - start, "peak_rss_mb": own_peak_rss_mb()}))


def own_rss_mb() -> float:
    """This process's resident set now (``VmRSS``) in MiB."""
    return status_mb("VmRSS")


class AnonymousPeak:
    """The peak of this process's anonymous resident memory (``RssAnon``), sampled every 10 ms by a thread.

    ``VmHWM`` counts the pages of memory-mapped files too: a merge that reads its parts through mmap
    shows their size there, although the kernel can drop those clean pages at any time. ``RssAnon`` is
    the memory only this process holds (heap, arrays). ``take()`` returns the peak since the last take.
    """

    def __init__(self) -> None:
        import threading

        self._peak = self._now()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _now() -> float:
        return status_mb("RssAnon", missing=float("nan"))

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            now = self._now()
            with self._lock:
                self._peak = max(self._peak, now)

    def take(self) -> float:
        now = self._now()
        with self._lock:
            peak, self._peak = max(self._peak, now), now
        return peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def reset_peak_rss() -> None:
    """Start this process's ``VmHWM`` again from its current RSS (Linux: ``5`` into /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def ondisk_rank(folder: str, factory: str, out: str, part_memory: int) -> None:
    """One torchrun rank of an on-disk build; writes OUT.rankR.json with each phase's time and peak RSS."""
    import torch.distributed as dist

    from uit_reid import distributed as D
    from uit_reid.retrieval.distributed_build import build_ondisk_index

    marks: list[tuple[float, float]] = []  # (seconds, peak RSS MB) at the end of each phase
    starts: list[float] = [own_rss_mb()]  # RSS MB at the start of each phase (the peak is reset there)
    anonymous = AnonymousPeak()
    anonymous.take()
    anon_peaks: list[float] = []  # peak anonymous RSS MB of each phase
    anon_starts: list[float] = [status_mb("RssAnon", missing=float("nan"))]  # anonymous RSS MB at each start

    def barrier() -> None:
        if D.is_distributed():
            dist.barrier()
        marks.append((time.perf_counter(), own_peak_rss_mb()))
        anon_peaks.append(anonymous.take())
        reset_peak_rss()
        starts.append(own_rss_mb())
        anon_starts.append(status_mb("RssAnon", missing=float("nan")))

    with D.torchrun_process_group("cpu"):
        rank, start = D.rank(), time.perf_counter()
        build_ondisk_index(EmbeddingShards(folder), factory, Path(out), rank=rank, world_size=D.world_size(),
                           barrier=barrier, part_memory=part_memory, progress=False)
        barrier()
    # barriers: trained quantizer shared | every part written | merged
    times = [t - s for (t, _), s in zip(marks, [start] + [t for t, _ in marks])]
    record = {"train_s": times[0], "add_s": times[1], "merge_s": times[2],
              "train_peak_rss_mb": marks[0][1], "add_peak_rss_mb": marks[1][1],
              "merge_peak_rss_mb": marks[2][1], "merge_start_rss_mb": starts[2],
              "train_peak_anon_mb": anon_peaks[0], "add_peak_anon_mb": anon_peaks[1],
              "merge_peak_anon_mb": anon_peaks[2], "merge_start_anon_mb": anon_starts[2]}
    anonymous.close()
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(record))


def build_on_disk(folder: Path, factory: str, path: Path, ranks: int, part_memory: int) -> dict[str, Any]:
    """Run `ondisk_rank` on ``ranks`` torchrun processes; the build's figures."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                    __file__, "_child", "ondisk", str(folder), factory, str(path), str(part_memory)],
                   check=True, env=env)
    wall = time.perf_counter() - start
    per_rank = [json.loads(Path(f"{path}.rank{r}.json").read_text()) for r in range(ranks)]
    return {"build_s": wall, "factory": factory, "ranks": ranks, "train_s": per_rank[0]["train_s"],
            "add_s": max(r["add_s"] for r in per_rank), "merge_s": per_rank[0]["merge_s"],
            "train_peak_rss_mb": round(per_rank[0]["train_peak_rss_mb"]),
            "add_peak_rss_mb_per_rank": [round(r["add_peak_rss_mb"]) for r in per_rank],
            "merge_peak_rss_mb": round(per_rank[0]["merge_peak_rss_mb"]),
            "merge_start_rss_mb": round(per_rank[0].get("merge_start_rss_mb", 0)),
            "add_peak_anon_mb_per_rank": [round(r["add_peak_anon_mb"]) for r in per_rank],
            "merge_peak_anon_mb": round(per_rank[0]["merge_peak_anon_mb"]),
            "merge_start_anon_mb": round(per_rank[0]["merge_start_anon_mb"]),
            "part_memory": part_memory,
            "peak_rss_mb": round(max(max(r["add_peak_rss_mb"], r["train_peak_rss_mb"]) for r in per_rank))}


def measure_search(index: GalleryIndex, queries: np.ndarray, exact: np.ndarray, rerank=None) -> dict:
    """Recall@10 and queries/s; the index's item positions are the shards' global rows (added in order).

    One untimed pass first: it pages in the memory-mapped lists and shard rows the queries touch, so
    the timed pass measures search, not the disk (cold first passes varied 3x between runs).
    """
    index.search(queries, 10, rerank=rerank, candidates=100, positions=True)
    start = time.perf_counter()
    _, rows = index.search(queries, 10, rerank=rerank, candidates=100, positions=True)
    seconds = time.perf_counter() - start
    return {"recall10": round(recall_at_10(rows, exact), 4), "qps": round(len(queries) / seconds, 1)}


def serve_startup(path: Path) -> float:
    """Seconds from nothing to a ready search engine over the index (model loading not included)."""
    code = (
        "import time; t=time.perf_counter();"
        "from uit_reid.retrieval import GalleryIndex;"
        "from uit_reid.serve.engine import SearchEngine;"
        "from uit_reid.serve.gallery import GalleryImages;"
        f"i=GalleryIndex.load({str(path)!r}, mmap=True);"
        "e=SearchEngine(i, lambda t: None, fingerprint=None);"
        "g=GalleryImages(i, '.');"
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return float(out.stdout.strip().splitlines()[-1])


def encode_throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Images/s of `uit-reid encode` (wall time of the whole command, start-up included) with 1 and 2 ranks."""
    from PIL import Image

    from uit_reid import CLIPDualEncoder, UITModel

    model = work / "tiny-model"
    if not model.exists():
        torch.manual_seed(0)
        UITModel(CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(96, 32)), num_classes=0,
                 tir_head=False).save_pretrained(model)
    images = work / "images"
    rng = np.random.default_rng(0)
    images.mkdir(exist_ok=True)
    for i in range(args.encode_images):
        p = images / f"{i:06d}.jpg"
        if not p.exists():
            Image.fromarray(rng.integers(0, 255, (192, 64, 3), dtype=np.uint8)).save(p)
    out: dict[str, Any] = {}
    for procs in (1, 2):
        target = work / f"emb-{procs}"
        subprocess.run(["rm", "-rf", str(target)], check=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "uit_reid.cli", "encode", "--model", str(model), "--images", str(images), "--out",
               str(target), "--shard-size", "256", "--workers", "0", "--device", "cpu", "--batch-size", "64"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                                     "OMP_NUM_THREADS": str(max(1, 2 // procs))})
        out[f"{procs}_process"] = round(args.encode_images / (time.perf_counter() - start), 1)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        run_child(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="gallery vectors")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=2000, help="Gaussian clusters in the mixture")
    p.add_argument("--spread", type=float, default=0.8, help="spread (norm) of a point around its cluster centre")
    p.add_argument("--rank", type=int, default=16, help="directions each cluster spreads along")
    p.add_argument("--shard-size", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default: default_nlist(n), at most 4096)")
    p.add_argument("--pq", type=int, default=64, help="PQ bytes per vector")
    p.add_argument("--pq-wide", type=int, default=128, help="PQ bytes per vector of the 'ivfpqwide' kind")
    p.add_argument("--nprobe", default="4,8,16", help="nprobe values to measure")
    p.add_argument("--hnsw-n", type=int, default=1_000_000, help="HNSW is built on the first this many vectors")
    p.add_argument("--ef-search", default="64,128")
    p.add_argument("--kinds", default="ivfpq,ivfpqwide,opq,hnsw",
                   help="which of ivfpq, ivfpqwide, opq, hnsw, ivfflat, ivfhnswpq to run (ivfhnswpq: "
                   "IVF<nlist>_HNSW32,PQ<--pq>, the lists found through an HNSW graph, as at LAION scale)")
    p.add_argument("--encode-images", type=int, default=512, help="images for the encode throughput (0: skip)")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one, deleted after)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work folder's vectors and indexes; a re-run with --keep reuses them and only re-measures")
    p.add_argument("--on-disk", action="store_true",
                   help="build the IVF kinds as on-disk indexes (lists and ids beside the file) on --ranks processes")
    p.add_argument("--ranks", type=int, default=1, help="torchrun processes of an --on-disk build")
    p.add_argument("--part-memory", default="1GiB", help="memory a rank's part may take before it is written "
                   "(an --on-disk build; the library's default)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = p.parse_args()
    if args.quick:
        args.n, args.dim, args.clusters, args.shard_size, args.queries = 20_000, 64, 100, 5_000, 100
        args.pq, args.pq_wide, args.hnsw_n, args.encode_images = 16, 32, 5_000, 32
    nlist = args.nlist or min(default_nlist(args.n), 4096)
    factories = {
        "ivfflat": f"IVF{nlist},Flat",
        "ivfpq": f"IVF{nlist},PQ{args.pq}",
        "ivfpqwide": f"IVF{nlist},PQ{args.pq_wide}",
        "opq": f"OPQ{args.pq},IVF{nlist},PQ{args.pq}",
        "hnsw": "HNSW32,Flat",
        "ivfhnswpq": f"IVF{nlist}_HNSW32,PQ{args.pq}",
    }
    work = Path(args.work or tempfile.mkdtemp(prefix="uit-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_before": [round(v, 2) for v in load],
        "n": args.n, "dim": args.dim, "clusters": args.clusters, "rank": args.rank, "spread": args.spread,
        "queries": args.queries, "nlist": nlist,
        "faiss_threads_search": 1, "kinds": {},
    }
    folder = work / "emb"
    start = time.perf_counter()
    queries = generate(args, folder)
    shards = EmbeddingShards(folder)
    result["generate_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    exact = kept_exact_top10(args, work, shards, queries)
    result["exact_stream_s"] = round(time.perf_counter() - start, 1)
    result["load_after_generation"] = [round(v, 2) for v in os.getloadavg()]
    import faiss

    for name in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        factory = factories[name]
        limit = min(args.hnsw_n, args.n) if name == "hnsw" else None
        stem = factory.replace(",", "_") + (f"-{limit}" if limit else "")
        path, record = work / f"{stem}.faiss", work / f"{stem}.build.json"
        on_disk = args.on_disk and name != "hnsw"
        if on_disk:
            path, record = work / f"{stem}-ondisk-{args.ranks}.index", work / f"{stem}-ondisk-{args.ranks}.build.json"
        if args.keep and path.exists() and record.exists():  # re-measure a kept index without rebuilding it
            built = json.loads(record.read_text())
            peak_mb = built["peak_rss_mb"]
            print(f"{name}: reusing the kept build ({record})", file=sys.stderr, flush=True)
        elif on_disk:
            built = build_on_disk(folder, factory, path, args.ranks, parse_bytes(args.part_memory))
            peak_mb = built["peak_rss_mb"]
            record.write_text(json.dumps(built))
        else:
            built, peak_mb = child(["build", str(folder), factory, str(path), *([str(limit)] if limit else [])])
            record.write_text(json.dumps(built))
        files = [path, *(path.with_name(path.name + ext) for ext in (".ivfdata", ".ids"))] if on_disk else [path]
        row: dict[str, Any] = {"factory": factory, "vectors": limit or args.n, "build_s": round(built["build_s"], 1),
                               "peak_rss_mb": round(peak_mb), "file_mb": round(sum(f.stat().st_size for f in files) / 1e6, 1)}
        if on_disk:
            row["on_disk"] = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in built.items()
                              if k not in ("build_s", "factory", "peak_rss_mb")}
            row["on_disk"]["serve_load_peak_rss_mb"] = round(child(["load", str(path), "1"])[1])
        for mm in (0, 1):
            row[f"load_s_mmap{mm}"] = round(child(["load", str(path), str(mm)])[0]["load_s"], 3)
        index = GalleryIndex.load(path, mmap=name != "hnsw")
        truth = exact if limit is None else exact_top10(shards, queries, limit)
        faiss.omp_set_num_threads(1)
        torch.set_num_threads(1)
        searches = []
        if index.family == "ivf":
            rerank = ShardVectors(index)
            for nprobe in [int(v) for v in args.nprobe.split(",")]:
                index.nprobe = nprobe
                searches.append({"nprobe": nprobe, **measure_search(index, queries, truth),
                                 "rerank100": measure_search(index, queries, truth, rerank)})
        else:
            for ef in [int(v) for v in args.ef_search.split(",")]:
                index.ef_search = ef
                searches.append({"ef_search": ef, **measure_search(index, queries, truth)})
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        torch.set_num_threads(os.cpu_count() or 1)
        row["search"] = searches
        if "serve_startup_s" not in result and index.family == "ivf":
            result["serve_startup_s"] = round(serve_startup(path), 2)
        result["kinds"][name] = row
        del index
        print(json.dumps({name: row}), file=sys.stderr, flush=True)
    if args.encode_images:
        result["encode_images_per_s"] = encode_throughput(args, work)
    result["load_after"] = [round(v, 2) for v in os.getloadavg()]
    result["peak_rss_main_mb"] = round(own_peak_rss_mb())
    print(json.dumps(result))
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work / "emb"), *[str(p) for p in work.glob("*.faiss")],
                        *[str(p) for p in work.glob("*-ondisk-*")]], check=False)
        if args.work is None:
            subprocess.run(["rm", "-rf", str(work)], check=False)


def table(result: dict[str, Any]) -> str:
    lines = ["| kind | vectors | build s | peak RSS MB | file MB | load s (read / mmap) | search setting | "
             "recall@10 | q/s | recall@10 re-ranked | q/s re-ranked |", "|---" * 11 + "|"]
    for row in result["kinds"].values():
        for s in row["search"]:
            setting = f"nprobe {s['nprobe']}" if "nprobe" in s else f"ef_search {s['ef_search']}"
            rr = s.get("rerank100")
            lines.append(
                f"| {row['factory']} | {row['vectors']:,} | {row['build_s']} | {row['peak_rss_mb']} | {row['file_mb']} | "
                f"{row['load_s_mmap0']} / {row['load_s_mmap1']} | {setting} | {s['recall10']} | {s['qps']} | "
                f"{rr['recall10'] if rr else '-'} | {rr['qps'] if rr else '-'} |"
            )
    disk = [row for row in result["kinds"].values() if "on_disk" in row]
    if disk:
        lines += ["", "| kind | ranks | train s | add s (slowest rank) | merge s | train peak RSS MB | add peak RSS MB per rank | "
                  "merge peak RSS MB (at its start) | peak anonymous MB: add per rank / merge (at its start) | serve load peak RSS MB | "
                  "serve start-up s |", "|---" * 11 + "|"]
        for row in disk:
            d = row["on_disk"]
            lines.append(f"| {row['factory']} | {d['ranks']} | {d['train_s']} | {d['add_s']} | {d['merge_s']} | "
                         f"{d['train_peak_rss_mb']} | {' / '.join(map(str, d['add_peak_rss_mb_per_rank']))} | "
                         f"{d['merge_peak_rss_mb']} (from {d.get('merge_start_rss_mb', '-')}) | "
                         f"{' / '.join(map(str, d.get('add_peak_anon_mb_per_rank', ['-'])))} / {d.get('merge_peak_anon_mb', '-')} "
                         f"(from {d.get('merge_start_anon_mb', '-')}) | "
                         f"{d['serve_load_peak_rss_mb']} | {result.get('serve_startup_s', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
