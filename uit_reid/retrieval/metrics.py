"""Retrieval metrics (R@K, mAP, mINP) computed from the ranks of each query's relevant items.

The field's evaluators argsort every row of the similarity matrix. That costs O(G log G) per query
and an int64 matrix as large as the input. Here every metric is derived from the 1-based ranks of the
*relevant* gallery items only: the rank of a relevant item is one plus the number of gallery items
that come before it, which takes comparisons against a handful of thresholds per query. Rows are
processed in chunks by a small thread pool, so extra memory stays bounded whatever the matrix size.

Tie rule (stable by gallery index): among gallery items with exactly equal scores, the one with the
smaller gallery index ranks first, i.e. the order of ``np.argsort(-similarity[i], kind="stable")``.
Ties are detected per query and only those queries take the slower exact path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

__all__ = ["binding_accuracy", "evaluate", "relevant_ranks"]

logger = logging.getLogger(__name__)

# Above this many relevant items per query a binary search beats one comparison pass per threshold.
_SEARCHSORTED_ABOVE = 64
# Bytes of temporaries per similarity element in one chunk (row copy, masks; the binary-search path's
# int64 positions and gathers dominate).
_BYTES_PER_ELEMENT = 32
# Elements per chunk: a few MiB, so the repeated comparison passes run from cache.
_CHUNK_ELEMENTS = 1 << 19


def _as_1d(values: Any, name: str) -> np.ndarray:
    """Pids as a 1-D numpy array (torch tensors, numpy arrays, lists)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    return arr


def _check_similarity(similarity: Any) -> np.ndarray | torch.Tensor:
    if isinstance(similarity, torch.Tensor):
        if similarity.ndim != 2:
            raise ValueError(
                f"similarity must be 2-D (queries x gallery), got shape {tuple(similarity.shape)}"
            )
        if not similarity.is_floating_point():
            similarity = similarity.float()
        return similarity.detach()
    arr = np.asarray(similarity)
    if arr.ndim != 2:
        raise ValueError(f"similarity must be 2-D (queries x gallery), got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return arr


def _rows(similarity: np.ndarray | torch.Tensor, rows: np.ndarray) -> np.ndarray:
    """A float32/float64 numpy copy of the selected rows (row copies, not element gathers)."""
    if isinstance(similarity, torch.Tensor):
        if similarity.device.type == "cpu" and similarity.dtype in (torch.float32, torch.float64):
            return np.take(similarity.numpy(), rows, axis=0)
        block = similarity.index_select(0, torch.from_numpy(rows).to(similarity.device))
        if block.dtype not in (torch.float32, torch.float64):
            block = block.float()
        return block.cpu().numpy()
    block = np.take(similarity, rows, axis=0)
    if block.dtype not in (np.float32, np.float64):
        block = block.astype(np.float32)
    return block


def _exact_ranks_row(x: np.ndarray, rel_idx: np.ndarray) -> np.ndarray:
    """Stable ranks of the relevant items of one row by direct comparison (handles ties)."""
    scores = x[rel_idx]
    greater = (x[None, :] > scores[:, None]).sum(axis=1)
    before = np.arange(x.shape[0])[None, :] < rel_idx[:, None]
    tied_before = ((x[None, :] == scores[:, None]) & before).sum(axis=1)
    return 1 + greater + tied_before


def _chunk_ranks(x: np.ndarray, rel_idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """1-based stable ranks of relevant items for a block of rows.

    ``x`` is (n, G); ``rel_idx`` is (n, R) gallery indices of relevant items, valid for the first
    ``counts[i]`` entries of row i. Returns (n, R) int64 ranks, padded with a huge value.
    """
    n, g = x.shape
    r = rel_idx.shape[1]
    valid = np.arange(r)[None, :] < counts[:, None]
    if not np.isfinite(x).all():
        raise ValueError("similarity contains NaN or infinite values")
    thr = np.take_along_axis(x, rel_idx, axis=1)
    thr = np.where(valid, thr, np.inf).astype(x.dtype, copy=False)
    thr.sort(axis=1)  # ascending thresholds, +inf padding last

    if r <= _SEARCHSORTED_ABOVE:
        # one comparison pass per threshold over a cache-sized block; equality passes detect ties
        greater = np.empty((n, r), dtype=np.int64)
        mask = np.empty((n, g), dtype=bool)
        equal_pairs = 0
        for t in range(r):
            np.greater(x, thr[:, t : t + 1], out=mask)
            greater[:, t] = np.add.reduce(mask.view(np.uint8), axis=1, dtype=np.int32)
            np.equal(x, thr[:, t : t + 1], out=mask)
            equal_pairs += int(np.count_nonzero(mask))
        # each relevant item equals its own threshold once; anything more is a tie somewhere
        tie_rows = np.zeros(n, dtype=bool)
        if equal_pairs > int(counts.sum()):
            tie_rows = np.array(
                [np.isin(x[i], thr[i, : counts[i]]).sum() > counts[i] for i in range(n)], dtype=bool
            )
    else:
        # many relevant items: a binary search per element beats one pass per threshold
        below = torch.searchsorted(torch.from_numpy(thr), torch.from_numpy(x)).numpy()  # thresholds < x
        hist = np.bincount((below + (np.arange(n) * (r + 1))[:, None]).ravel(), minlength=n * (r + 1))
        greater = g - np.cumsum(hist.reshape(n, r + 1), axis=1)[:, :r]  # items with x > thr[t]
        padded = np.concatenate([thr, np.full((n, 1), np.inf, dtype=thr.dtype)], axis=1)
        equal = np.take_along_axis(padded, below, axis=1) == x  # x equals the threshold just above
        tie_rows = equal.sum(axis=1) > counts
    dup_thr = (thr[:, 1:] == thr[:, :-1]) & valid[:, 1:]  # tied relevant items
    tie_rows |= dup_thr.any(axis=1)
    ranks = 1 + greater
    big = np.iinfo(np.int64).max // 4
    ranks = np.where(valid, ranks, big).astype(np.int64)

    for i in np.flatnonzero(tie_rows):
        c = counts[i]
        ranks[i, :c] = _exact_ranks_row(x[i], rel_idx[i, :c])
        ranks[i, c:] = big
    ranks.sort(axis=1)
    return ranks


def _prepare(
    similarity: Any, query_pids: Any, gallery_pids: Any
) -> tuple[np.ndarray | torch.Tensor, np.ndarray, list[np.ndarray]]:
    """Validate inputs; return the similarity, query pid codes and gallery indices per pid code."""
    sim = _check_similarity(similarity)
    q = _as_1d(query_pids, "query_pids")
    g = _as_1d(gallery_pids, "gallery_pids")
    nq, ng = sim.shape
    if q.shape[0] != nq:
        raise ValueError(f"query_pids has {q.shape[0]} entries but similarity has {nq} rows (queries)")
    if g.shape[0] != ng:
        raise ValueError(f"gallery_pids has {g.shape[0]} entries but similarity has {ng} columns (gallery)")
    if nq == 0 or ng == 0:
        raise ValueError(f"similarity is empty (shape {tuple(sim.shape)})")
    # Integer codes for pids of any sortable type (ints, strings): only equality matters.
    _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = codes.reshape(-1)
    q_codes, g_codes = codes[:nq], codes[nq:]
    n_codes = int(codes.max()) + 1
    order = np.argsort(g_codes, kind="stable")
    bounds = np.searchsorted(g_codes[order], np.arange(n_codes + 1))
    missing = np.flatnonzero(bounds[q_codes + 1] == bounds[q_codes])
    if missing.size:
        shown = ", ".join(f"{i} (pid {q[i].tolist()!r})" for i in missing[:5])
        more = f" and {missing.size - 5} more" if missing.size > 5 else ""
        raise ValueError(
            f"query {shown}{more} has no relevant gallery item (no gallery_pids entry equals its pid)"
        )
    groups = [order[bounds[c] : bounds[c + 1]] for c in range(n_codes)]
    return sim, q_codes, groups


def _iter_chunks(
    similarity: Any, query_pids: Any, gallery_pids: Any, memory_budget: int, num_threads: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (query indices, sorted padded ranks, relevant counts) chunk by chunk."""
    sim, q_codes, groups = _prepare(similarity, query_pids, gallery_pids)
    nq, ng = sim.shape
    counts = np.array([groups[c].size for c in q_codes], dtype=np.int64)
    # Queries grouped by their number of relevant items, so chunks carry little padding.
    order = np.argsort(counts, kind="stable")
    workers = max(1, num_threads or torch.get_num_threads() or os.cpu_count() or 1)
    rows_per_chunk = max(
        1, min(int(memory_budget // (workers * ng * _BYTES_PER_ELEMENT)), _CHUNK_ELEMENTS // ng)
    )
    chunks = [order[s : s + rows_per_chunk] for s in range(0, nq, rows_per_chunk)]

    def work(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = counts[rows]
        rel = np.zeros((rows.size, int(c.max())), dtype=np.intp)
        for j, qi in enumerate(rows):
            members = groups[q_codes[qi]]
            rel[j, : members.size] = members
        return rows, _chunk_ranks(_rows(sim, rows), rel, c), c

    if workers == 1 or len(chunks) == 1:
        yield from map(work, chunks)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # bounded look-ahead: at most `workers` chunks in flight keeps memory within the budget
        pending = [pool.submit(work, ch) for ch in chunks[:workers]]
        nxt = workers
        while pending:
            result = pending.pop(0).result()
            if nxt < len(chunks):
                pending.append(pool.submit(work, chunks[nxt]))
                nxt += 1
            yield result


def relevant_ranks(
    similarity: Any,
    query_pids: Any,
    gallery_pids: Any,
    *,
    memory_budget: int = 512 * 2**20,
    num_threads: int | None = None,
) -> list[np.ndarray]:
    """1-based ranks (ascending) of every query's relevant gallery items, under the stable tie rule.

    ``memory_budget`` bounds the bytes of temporaries alive at once across all worker threads.
    """
    nq = _check_similarity(similarity).shape[0]
    out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * nq
    for rows, ranks, counts in _iter_chunks(similarity, query_pids, gallery_pids, memory_budget, num_threads):
        for j, qi in enumerate(rows):
            out[qi] = ranks[j, : counts[j]].copy()
    return out


def evaluate(
    similarity: Any,
    query_pids: Any,
    gallery_pids: Any,
    ks: Sequence[int] = (1, 5, 10),
    *,
    memory_budget: int = 512 * 2**20,
    num_threads: int | None = None,
) -> dict[str, float]:
    """R@K (CMC), mAP and mINP, in percent, for a (queries x gallery) similarity matrix.

    Rows of ``similarity`` are queries (captions), columns gallery items (images); a gallery item is
    relevant when its pid equals the query's pid. ``similarity`` and the pids may be torch tensors or
    numpy arrays. Pass ``similarity.T`` with the pids swapped for image-to-text metrics.

    - ``R{k}``: percent of queries with a relevant item in the top k.
    - ``mAP``: mean over queries of the mean, over relevant items, of precision at that item's rank.
    - ``mINP``: mean over queries of (#relevant) / (rank of the last relevant item).

    Ties are broken by gallery index (stable order). Raises ``ValueError`` naming the first query
    indices that have no relevant gallery item. ``memory_budget`` (bytes) bounds the temporaries;
    ``num_threads`` defaults to ``torch.get_num_threads()``.
    """
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be positive, got {memory_budget}")
    hits = {k: 0 for k in ks}
    ap_sum = inp_sum = 0.0
    nq = 0
    for _, ranks, counts in _iter_chunks(similarity, query_pids, gallery_pids, memory_budget, num_threads):
        n = counts.size
        nq += n
        valid = np.arange(ranks.shape[1])[None, :] < counts[:, None]
        precision = np.where(valid, np.arange(1, ranks.shape[1] + 1)[None, :] / ranks, 0.0)
        ap_sum += float((precision.sum(axis=1) / counts).sum())
        inp_sum += float((counts / ranks[np.arange(n), counts - 1]).sum())
        for k in ks:
            hits[k] += int((ranks[:, 0] <= k).sum())
    result = {f"R{k}": 100.0 * hits[k] / nq for k in ks}
    result["mAP"] = 100.0 * ap_sum / nq
    result["mINP"] = 100.0 * inp_sum / nq
    return result


def binding_accuracy(true_scores: Any, contrast_scores: Any) -> float:
    """Percent of pairs whose true caption scores above its contrast caption (attribute binding).

    Item ``i`` compares one image's score with its true caption, ``true_scores[i]``, against its score
    with a contrast caption, ``contrast_scores[i]`` (e.g. the garment colours swapped). An exact tie
    counts half, so a model that cannot tell the two captions apart scores exactly 50 (chance).
    """
    true, contrast = _as_1d(true_scores, "true_scores"), _as_1d(contrast_scores, "contrast_scores")
    if true.shape != contrast.shape:
        raise ValueError(
            f"true_scores and contrast_scores must have the same length, got {true.size} and {contrast.size}"
        )
    if true.size == 0:
        raise ValueError("binding_accuracy needs at least one pair of scores")
    if not (np.isfinite(true).all() and np.isfinite(contrast).all()):
        raise ValueError("binding scores contain NaN or infinite values")
    wins = (true > contrast).sum() + 0.5 * (true == contrast).sum()
    return float(100.0 * wins / true.size)
