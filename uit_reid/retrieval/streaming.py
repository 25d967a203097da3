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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from uit_reid._errors import EncoderMismatchError
from uit_reid.retrieval.idmap import keys_of
from uit_reid.retrieval.index import GalleryIndex, default_nlist
from uit_reid.retrieval.shards import MANIFEST, EmbeddingShards, ShardFormatError

__all__ = ["ADD_ROWS", "ShardVectors", "add_shard_numbers", "add_shard_rows", "add_shards", "build_index_from_shards", "trained_index",
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
    index = trained_index(shards, kind, train_size=train_size, progress=progress, **index_kwargs)
    add_shards(index, shards, progress=progress)
    return index


def trained_index(
    shards: EmbeddingShards, kind: str, *, train_size: int | None = None, progress: bool = True, **index_kwargs: Any
) -> GalleryIndex:
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
        try:
            index.train(training_sample(shards, size, index.seed))
        except ValueError:  # NaN, inf or all-zero rows in the sample: name the shard that holds one
            _name_bad_rows(index, shards, [(n, 0, r) for n, r in enumerate(shards.rows)], progress)
            raise
    return index


def add_shards(
    index: GalleryIndex, shards: EmbeddingShards, *, progress: bool = True, allow_no_fingerprint: bool = False
) -> None:
    """Append every vector of ``shards`` to ``index`` (trained already, or trained by its first shard).

    The shards' encoder fingerprint must match the index's; a folder that records none (no manifest:
    not written by ``uit-reid encode``) is refused by an index that records one unless
    ``allow_no_fingerprint``. Records the folder and the size and modification time of each shard
    file in ``index.metadata["embeddings"]`` so `ShardVectors` can find (and check) the full vectors
    of each slot. A bad row or id is reported with the shard file that holds it.
    """
    if len(shards) == 0:
        raise ValueError(f"{shards.folder} holds no vectors")
    if shards.fingerprint is None and index.fingerprint is not None and not allow_no_fingerprint:
        raise EncoderMismatchError(
            f"{shards.folder} records no encoder fingerprint (no {MANIFEST}), so its vectors cannot be checked "
            f"against the index's encoder {index.fingerprint!r}; add it anyway with --allow-no-fingerprint "
            "(allow_no_fingerprint=True) only if you know the same model encoded it")
    first = index.num_slots
    index._check_writable("add")
    stamps = shards.stamps()
    add_shard_numbers(index, shards, range(shards.num_shards), progress=progress)
    entries = list(index.metadata.get("embeddings", []))
    entries.append({"folder": str(shards.folder.resolve()), "first_slot": first, "rows": len(shards),
                    "shard_stamps": stamps})
    index.metadata["embeddings"] = entries
    logger.info("added %d vectors from %s (index now %d)", len(shards), shards.folder, len(index))


def add_shard_numbers(
    index: GalleryIndex, shards: EmbeddingShards, numbers: Sequence[int], *, progress: bool = True
) -> None:
    """Append the vectors of shards ``numbers`` (in that order) to ``index``; records nothing in its metadata.

    A bad row or id is reported with the shard file that holds it."""
    add_shard_rows(index, shards, [(n, 0, shards.rows[n]) for n in numbers], progress=progress)


def add_shard_rows(
    index: GalleryIndex, shards: EmbeddingShards, ranges: Sequence[tuple[int, int, int]], *, progress: bool = True
) -> None:
    """Append rows ``begin:end`` of each ``(shard, begin, end)`` in ``ranges`` (in that order) to ``index``;
    records nothing in its metadata. A bad row or id is reported with the shard file that holds it."""
    index._check_fingerprint(shards.fingerprint, "add")  # before the sizing pass reads every shard
    ranges = [(n, a, b) for n, a, b in ranges if b > a]
    if not ranges:
        return
    # one sort of all the new ids' keys proves them new and distinct, so the adds need no id lookup
    # table (10M ids: 160 MB, copied at every add); equal keys fall back to checking each add exactly
    known_new = index.id_type in (None, "str") and index._ids.none_of(
        np.concatenate([keys_of(shards.ids(n)[a:b], "str")[0] for n, a, b in ranges]))
    try:
        assigned = index._reserve(vectors for _, _, vectors in _blocks(shards, ranges, progress, "sizing IVF lists"))
    except ValueError:
        _name_bad_rows(index, shards, ranges, progress)
        raise
    ids, shard, done = [], -1, 0
    for n, start, vectors in _blocks(shards, ranges, progress, "adding shards"):
        if n != shard:
            ids, shard = shards.ids(n), n
        lists = None if assigned is None else assigned[done : done + len(vectors)]
        done += len(vectors)
        try:
            index._add(vectors, ids[start : start + len(vectors)], shards.fingerprint, known_new=known_new,
                       assigned=lists)
        except (ValueError, TypeError) as err:
            _name_bad_rows(index, shards, [(n, 0, shards.rows[n])], progress=False)
            raise ShardFormatError(f"metadata file {shards.files(n)[1]}: {err}") from None


def _name_bad_rows(
    index: GalleryIndex, shards: EmbeddingShards, ranges: Sequence[tuple[int, int, int]], progress: bool
) -> None:
    """Raise the index's own refusal of a NaN, infinite or all-zero row, naming the shard file and row
    that holds the first one among ``ranges`` (after an add or a training failed on such a row)."""
    for n, start, vectors in _blocks(shards, ranges, progress, "finding the bad row"):
        try:
            index._features(vectors, f"embedding file {shards.files(n)[0]} (from row {start})")
        except ValueError as err:
            raise ShardFormatError(str(err)) from None


def _blocks(
    shards: EmbeddingShards, ranges: Sequence[tuple[int, int, int]], progress: bool, what: str
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(shard, first row, float16 rows) over ``ranges`` (shard, begin, end), `ADD_ROWS` rows at a time
    (each block is converted to float32 by the index, one at a time)."""
    for n, begin, end in tqdm(ranges, desc=what, unit="shard", disable=not progress):
        if end <= begin:
            continue
        vectors = shards.vectors(n)
        for start in range(begin, end, ADD_ROWS):
            yield n, start, vectors[start : min(end, start + ADD_ROWS)]
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
        self.parts: list[tuple[int, EmbeddingShards, list | None]] = []
        for entry, folder in zip(entries, folders):
            shards = EmbeddingShards(Path(folder))
            if not isinstance(entry, dict) or entry.get("rows") != len(shards):
                raise ValueError(f"embedding folder {folder} holds {len(shards)} vectors, the index recorded "
                                 f"{entry.get('rows') if isinstance(entry, dict) else entry!r}")
            if shards.dim != index.dim:
                raise ValueError(f"embedding folder {folder} has dimension {shards.dim}, the index {index.dim}")
            stamps = entry.get("shard_stamps")  # absent from indexes built before stamps were recorded
            if stamps is not None and (not isinstance(stamps, list) or len(stamps) != shards.num_shards):
                raise ValueError(f"the index's record of embedding folder {folder} lists {len(stamps) if isinstance(stamps, list) else stamps!r} "
                                 f"shards, the folder holds {shards.num_shards}")
            self.parts.append((int(entry["first_slot"]), shards, stamps))
            self._check_unchanged(shards, stamps, range(shards.num_shards))
        self.dim = index.dim

    def files(self) -> list[Path]:
        """The ``.npy`` files the vectors are read from (each opened again, memory-mapped, for every call)."""
        return [path for _, shards, _ in self.parts for path in shards.vector_files()]

    @staticmethod
    def _check_unchanged(shards: EmbeddingShards, stamps: list | None, which: Iterable[int]) -> None:
        """Refuse re-ranking from a shard file whose size or modification time differs from the build's."""
        if stamps is None:
            return
        now = shards.stamps(which)
        for n, stamp in zip(which, now):
            if stamps[n] != stamp:
                raise ValueError(f"embedding file {shards.files(n)[0]} changed since the index was built (size, "
                                 "modification time): re-ranking from it would give wrong scores; rebuild the "
                                 "index, or search without re-ranking (a copied folder must keep its files' "
                                 "times: cp -p, rsync -a)")

    def __call__(self, slots: np.ndarray) -> np.ndarray:
        slots = np.asarray(slots, dtype=np.int64)
        out = np.zeros(slots.shape + (self.dim,), np.float32)
        for first, shards, stamps in self.parts:
            inside = (slots >= first) & (slots < first + len(shards))
            if inside.any():
                local = slots[inside] - first
                touched = np.unique(np.searchsorted(shards.offsets, local, side="right") - 1).tolist()
                self._check_unchanged(shards, stamps, touched)
                out[inside] = shards.rows_of(local)
        return out
