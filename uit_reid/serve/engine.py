"""The search behind the service: text queries → micro-batched encoding → index search → ranked hits.

`SearchEngine` owns the index, a text encoder (any callable from a list of strings to a (B, D)
tensor) and a `MicroBatcher`; the encoder and the index search both run in the batcher's worker
thread, one batch at a time, so the event loop never blocks on them. It also counts the queries and
batches that ``/stats`` reports (latency and memory are measured by `uit_reid.serve.metrics`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from uit_reid.retrieval import GalleryIndex, Hit, ranked_hits
from uit_reid.serve.batcher import MicroBatcher
from uit_reid.serve.watched import FilesChanged, WatchedFiles

__all__ = ["SearchEngine"]


class SearchEngine:
    """Ranked gallery hits for text queries, batched across concurrent requests.

    Args:
        index: the gallery index (searched with ``fingerprint``, so a wrong encoder is refused).
        encode: list of strings → (B, D) features (raw or normalised: the index normalises).
        fingerprint: the encoder's fingerprint.
        max_batch, max_wait: micro-batching (see `MicroBatcher`).
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
        """Top-``k`` hits of each query (validated by the caller), counted for the stats."""
        results = await self.batcher.submit([(q, k) for q in queries])
        with self._lock:
            self.queries_served += len(queries)
            self.requests_served += 1
        return results

    def stats(self) -> dict[str, Any]:
        """Index size, fingerprint, query and request counts, batching (``/stats`` adds latency and memory
        from `uit_reid.serve.metrics.ServiceMetrics.stats`)."""
        with self._lock:
            served, requests = self.queries_served, self.requests_served
        return {
            "index_size": len(self.index),
            "index_kind": self.index.kind,
            "index_mmap": self.index.read_only,
            "model_fingerprint": self.fingerprint,
            "queries_served": served,
            "search_requests": requests,
            "batches": self.batcher.batches,
            "mean_batch_size": round(self.batcher.mean_batch, 3),
        }
