"""Indexes from embedding shards: built and extended one shard at a time, re-ranked from the shards.

Memory stays bounded by the index plus one shard (and the IVF training sample): vectors are read
from the memory-mapped ``.npy`` files shard by shard, never all at once. Slots are given in shard
order, so the index's ``metadata["embeddings"]`` (one entry per folder added: its path, first slot
and row count) maps every slot back to its row in the files, which is what `ShardVectors` uses for
exact re-ranking.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from uit_reid.retrieval.idmap import keys_of
from uit_reid.retrieval.index import GalleryIndex, default_nlist
from uit_reid.retrieval.shards import EmbeddingShards

__all__ = ["ADD_ROWS", "ShardVectors", "add_shard_numbers", "add_shards", "build_index_from_shards", "trained_index",
           "training_sample"]

logger = logging.getLogger(__name__)

ADD_ROWS = 32768
"""Rows handed to `GalleryIndex.add` at a time: its float32 copy and FAISS's per-add buffers
(residuals, list assignments) scale with this, not with the shard size (64 MB of float32 at 512-d)."""


def training_sample(shards: EmbeddingShards, size: int, seed: int = 0) -> np.ndarray:
    """``size`` rows (float32) drawn without replacement from all shards, in row order."""
    n = len(shards)
    rows = np.arange(n) if size >= n else np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return shards.rows_of(rows)


def build_index_from_shards(
    shards: EmbeddingShards,
    kind: str = "flat",
    *,
    train_size: int | None = None,
    progress: bool = True,
    **index_kwargs: Any,
) -> GalleryIndex:
    """A new `GalleryIndex` over every vector of ``shards`` (ids: their ``image_path``), streamed.

    IVF kinds are trained first on a sample across all shards (``train_size`` rows; default
    ``max(40 * nlist, 40 * 2**bits)``), then the shards are added in order.
    """
    index = trained_index(shards, kind, train_size=train_size, **index_kwargs)
    add_shards(index, shards, progress=progress)
    return index


def trained_index(shards: EmbeddingShards, kind: str, *, train_size: int | None = None, **index_kwargs: Any) -> GalleryIndex:
    """A new, empty `GalleryIndex` for ``shards``, trained for IVF kinds on a seeded sample across all shards
    (``train_size`` rows; default ``max(40 * nlist, 40 * 2**bits)``): the same index for every caller."""
    if len(shards) == 0:
        raise ValueError(f"{shards.folder} holds no vectors")
    if kind == "ivf" and index_kwargs.get("nlist") is None:
        index_kwargs["nlist"] = default_nlist(len(shards))
    index = GalleryIndex(shards.dim, kind, fingerprint=shards.fingerprint, train_size=train_size, **index_kwargs)
    layout = index.layout
    if layout is not None and layout.kind == "ivf":
        size = train_size or max(40 * layout.nlist, 40 * (1 << layout.pq_bits) if layout.pq_m else 0)
        index.train(training_sample(shards, size, index.seed))
    return index


def add_shards(index: GalleryIndex, shards: EmbeddingShards, *, progress: bool = True) -> None:
    """Append every vector of ``shards`` to ``index`` (trained already, or trained by its first shard).

    The shards' encoder fingerprint must match the index's. Records the folder in
    ``index.metadata["embeddings"]`` so `ShardVectors` can find the full vectors of each slot.
    """
    if len(shards) == 0:
        raise ValueError(f"{shards.folder} holds no vectors")
    first = index.num_slots
    add_shard_numbers(index, shards, range(shards.num_shards), progress=progress)
    entries = list(index.metadata.get("embeddings", []))
    entries.append({"folder": str(shards.folder.resolve()), "first_slot": first, "rows": len(shards)})
    index.metadata["embeddings"] = entries
    logger.info("added %d vectors from %s (index now %d)", len(shards), shards.folder, len(index))


def add_shard_numbers(
    index: GalleryIndex, shards: EmbeddingShards, numbers: Sequence[int], *, progress: bool = True
) -> None:
    """Append the vectors of shards ``numbers`` (in that order) to ``index``; records nothing in its metadata."""
    index._check_fingerprint(shards.fingerprint, "add")  # before the sizing pass reads every shard
    if not numbers:
        return
    # one sort of all the new ids' keys proves them new and distinct, so the adds need no id lookup
    # table (10M ids: 160 MB, copied at every add); equal keys fall back to checking each add exactly
    known_new = index.id_type in (None, "str") and index._ids.none_of(
        np.concatenate([keys_of(shards.ids(n), "str")[0] for n in numbers]))
    index._reserve(vectors for _, _, vectors in _blocks(shards, numbers, progress, "sizing IVF lists"))
    ids, shard = [], -1
    for n, start, vectors in _blocks(shards, numbers, progress, "adding shards"):
        if n != shard:
            ids, shard = shards.ids(n), n
        index._add(vectors, ids[start : start + len(vectors)], shards.fingerprint, known_new=known_new)


def _blocks(
    shards: EmbeddingShards, numbers: Sequence[int], progress: bool, what: str
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(shard, first row, float16 rows) over shards ``numbers``, `ADD_ROWS` rows at a time (each block is
    converted to float32 by the index, one at a time)."""
    for n in tqdm(numbers, desc=what, unit="shard", disable=not progress):
        if not shards.rows[n]:
            continue
        vectors = shards.vectors(n)
        for start in range(0, shards.rows[n], ADD_ROWS):
            yield n, start, vectors[start : start + ADD_ROWS]
        del vectors  # unmaps the shard: its pages stop counting as resident


class ShardVectors:
    """Slots of an index -> their full vectors from the embedding shards it was built from (for re-ranking).

    Args:
        index: an index built by `build_index_from_shards` / `add_shards`.
        folders: the embedding folders, in the order they were added; default: the folders the
            index records (give them explicitly for an index file you did not build yourself).
    """

    def __init__(self, index: GalleryIndex, folders: Sequence[str | os.PathLike[str]] | None = None) -> None:
        entries = index.metadata.get("embeddings")
        if not isinstance(entries, list) or not entries:
            raise ValueError("this index records no embedding folders: it was not built from embedding shards")
        if folders is None:
            folders = [e.get("folder") for e in entries if isinstance(e, dict)]
        if len(folders) != len(entries):
            raise ValueError(f"the index was built from {len(entries)} embedding folders, {len(folders)} given")
        self.parts: list[tuple[int, EmbeddingShards]] = []
        for entry, folder in zip(entries, folders):
            shards = EmbeddingShards(Path(folder))
            if not isinstance(entry, dict) or entry.get("rows") != len(shards):
                raise ValueError(f"embedding folder {folder} holds {len(shards)} vectors, the index recorded "
                                 f"{entry.get('rows') if isinstance(entry, dict) else entry!r}")
            if shards.dim != index.dim:
                raise ValueError(f"embedding folder {folder} has dimension {shards.dim}, the index {index.dim}")
            self.parts.append((int(entry["first_slot"]), shards))
        self.dim = index.dim

    def files(self) -> list[Path]:
        """The ``.npy`` files the vectors are read from (each opened again, memory-mapped, for every call)."""
        return [path for _, shards in self.parts for path in shards.vector_files()]

    def __call__(self, slots: np.ndarray) -> np.ndarray:
        slots = np.asarray(slots, dtype=np.int64)
        out = np.zeros(slots.shape + (self.dim,), np.float32)
        for first, shards in self.parts:
            inside = (slots >= first) & (slots < first + len(shards))
            if inside.any():
                out[inside] = shards.rows_of(slots[inside] - first)
        return out
