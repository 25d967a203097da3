"""The search behind the service: text queries → micro-batched encoding → index search → ranked hits.

`SearchEngine` owns the index, a text encoder (any callable from a list of strings to a (B, D)
tensor) and a `MicroBatcher`; the encoder and the index search both run in the batcher's worker
thread, one batch at a time, so the event loop never blocks on them. It also keeps the figures
that ``/stats`` reports.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from uit_reid.retrieval import GalleryIndex, Hit, ranked_hits
from uit_reid.serve.batcher import MicroBatcher
from uit_reid.serve.watched import FilesChanged, WatchedFiles

__all__ = ["SearchEngine", "resident_memory_mb"]


def resident_memory_mb() -> float | None:
    """This process's resident set size in MiB (Linux ``/proc/self/statm``), None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


class SearchEngine:
    """Ranked gallery hits for text queries, batched across concurrent requests.

    Args:
        index: the gallery index (searched with ``fingerprint``, so a wrong encoder is refused).
        encode: list of strings → (B, D) features (raw or normalised: the index normalises).
        fingerprint: the encoder's fingerprint.
        max_batch, max_wait: micro-batching (see `MicroBatcher`).
        latency_window: how many recent request latencies the percentiles are taken over.
        rerank, candidates: exact re-ranking of ``candidates`` hits per query (`GalleryIndex.search`).
        files: the files the index and ``rerank`` read while searching (`WatchedFiles`): each search is
            refused with `FilesChanged` once one changed on disk. Default: none watched.
    """

    def __init__(
        self,
        index: GalleryIndex,
        encode: Callable[[list[str]], torch.Tensor],
        *,
        fingerprint: str | None,
        max_batch: int = 64,
        max_wait: float = 0.002,
        latency_window: int = 2000,
        rerank: Callable[[np.ndarray], np.ndarray] | None = None,
        candidates: int = 100,
        files: WatchedFiles | None = None,
    ) -> None:
        self.index = index
        self.encode = encode
        self.fingerprint = fingerprint
        self.rerank = rerank
        self.candidates = candidates
        self.files = files if files is not None else WatchedFiles([])
        self.batcher: MicroBatcher[tuple[str, int], list[Hit]] = MicroBatcher(
            self._search_batch, max_batch=max_batch, max_wait=max_wait, quiet=(FilesChanged,)
        )
        self.queries_served = 0
        self.requests_served = 0
        self._latencies: collections.deque[float] = collections.deque(maxlen=latency_window)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.index)

    @torch.inference_mode()
    def _search_batch(self, items: list[tuple[str, int]]) -> list[list[Hit]]:
        texts = [q for q, _ in items]
        k_max = max(k for _, k in items)
        feats = self.encode(texts)
        q = feats.detach().float().cpu().numpy()
        with self.files.reading():  # refuses, before or after, when a file it reads changed on disk
            scores, numbers = self.index.search(q, k_max, fingerprint=self.fingerprint, positions=True,
                                                rerank=self.rerank, candidates=self.candidates)
        ids = self.index.ids_at(numbers)  # numbers, not ids, come back: no id -> number table is kept
        return [ranked_hits(scores[row, :k], ids[row, :k], numbers=numbers[row, :k]) for row, (_, k) in enumerate(items)]

    async def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-``k`` hits of each query (validated by the caller), timed for the stats."""
        start = time.perf_counter()
        results = await self.batcher.submit([(q, k) for q in queries])
        elapsed = time.perf_counter() - start
        with self._lock:
            self.queries_served += len(queries)
            self.requests_served += 1
            self._latencies.append(elapsed)
        return results

    def stats(self) -> dict[str, Any]:
        """Index size, fingerprint, counts, batching and latency percentiles (ms; None before any search)."""
        with self._lock:
            lat = np.array(self._latencies, dtype=np.float64) * 1000.0
            served, requests = self.queries_served, self.requests_served
        pct = {f"p{p}": (round(float(np.percentile(lat, p)), 3) if lat.size else None) for p in (50, 90, 99)}
        return {
            "index_size": len(self.index),
            "index_kind": self.index.kind,
            "index_mmap": self.index.read_only,
            "resident_memory_mb": resident_memory_mb(),
            "model_fingerprint": self.fingerprint,
            "queries_served": served,
            "search_requests": requests,
            "batches": self.batcher.batches,
            "mean_batch_size": round(self.batcher.mean_batch, 3),
            "latency_ms": {**pct, "window": int(lat.size)},
        }
