"""GalleryIndex: a cosine-similarity FAISS index over gallery features, with ids, removal and safe saving.

Vectors are L2-normalised on the way in (queries too), so inner product is cosine similarity and
encoders can hand over raw pooled features. The kind is a FAISS factory string, built with
``faiss.index_factory`` (inner product) and tuned through ``faiss.ParameterSpace``; three aliases stay:

- ``"flat"`` (``Flat``): exact search, computed blockwise with torch matrix products over the
  stored vectors (faster than FAISS's own flat search on CPU and free of process-global settings).
- ``"ivf"`` (``IVF<nlist>,Flat``): inverted lists; ``nlist`` is picked from the size of the first
  batch added (about ``2 * sqrt(n)``, a power of two). ``nprobe`` trades recall for speed.
- ``"hnsw"`` (``HNSW<m>,Flat``): a graph; ``ef_search`` trades recall for speed. HNSW cannot delete
  vectors, so removed ids are masked at search time with an id selector.

Compressed kinds for large galleries: ``"IVF4096,PQ64"`` (64-byte codes), ``"OPQ64,IVF4096,PQ64"``
(a learnt rotation first), and ``search(..., rerank=...)`` re-scores the top candidates exactly from
the full vectors (see `uit_reid.retrieval.shards`). `uit_reid.retrieval._faiss_check.parse_factory`
names the supported strings.

Ids are int64 numbers or strings (image paths, say); the two cannot be mixed in one index. Internally
every vector gets a sequential int64 *slot* as its FAISS label; the index keeps the slot -> id map.

Saved form: ``save(path)`` writes ONE file, replaced with one ``os.replace``, so a crash or a kill
at any instant leaves either the complete old index or the complete new one under ``path``. The file
is an 8-byte magic, a little-endian uint64 header length, a JSON header (format version, dim, kind,
factory string, parameters, normalisation, encoder fingerprint, user metadata, the byte lengths and
SHA-256 of the id map and of the FAISS bytes, and a SHA-256 of the header itself), the binary id map
(one live byte per slot, then int64 ids, or uint64 offsets and UTF-8 text for string ids) and the
FAISS index bytes (``faiss.write_index`` format, never pickle).

Loading checks, in this order and before FAISS sees a byte: the magic and sizes, the header
checksum, the fields, the id map's checksum and contents (unique ids of the right type, offsets in
range, valid UTF-8), the FAISS bytes' checksum, and then the FAISS bytes' structure
(`uit_reid.retrieval._faiss_check`: the layout the header's factory string builds, the header's
dimension, every declared size within the file, graph links in range, the stored labels exactly the
live slots). The checksums catch accidents; the structural checks keep a hand-crafted file from
making FAISS allocate or read out of bounds. Neither makes the *contents* trustworthy: someone who
ships you an index decides what it returns. With ``load(..., mmap=True)`` the FAISS bytes are checked
through a read-only memory map and IVF lists stay mapped from the file (``faiss.IO_FLAG_MMAP``), so
a large index is never read into memory, let alone twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap as mmap_module
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from uit_reid.io import atomic_write_bytes
from uit_reid.retrieval._faiss_check import FaissBytesError, Layout, check_index_bytes, parse_factory

__all__ = ["FORMAT_VERSION", "KIND_ALIASES", "GalleryIndex", "IndexFormatError", "default_nlist"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""Version of the saved index format (header ``format_version``); 3: factory strings, binary id map."""
_FORMAT_NAME = "uit_reid.GalleryIndex"
_MAGIC = b"UITGIDX\n"
_LEN = struct.Struct("<Q")
KIND_ALIASES = ("flat", "ivf", "hnsw")
"""Short names for the three uncompressed kinds (any supported FAISS factory string works too)."""
_FLAT_GALLERY_BLOCK = 16384
_HASH_CHUNK = 1 << 24


class IndexFormatError(ValueError):
    """A saved index is missing, truncated, corrupted or of an unknown format."""


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def default_nlist(n: int) -> int:
    """IVF list count for a gallery of ``n`` vectors: ~2*sqrt(n) as a power of two, >= 39 points per list."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    target = 2 ** round(math.log2(max(1.0, 2.0 * math.sqrt(n))))
    return int(max(1, min(target, n // 39)))


class GalleryIndex:
    """Cosine-similarity gallery index over FAISS (see module docstring).

    Args:
        dim: feature dimension.
        kind: ``"flat"`` (exact), ``"ivf"``, ``"hnsw"`` or a FAISS factory string such as
            ``"IVF4096,PQ64"`` or ``"OPQ64,IVF4096,PQ64"`` (`uit_reid.retrieval._faiss_check.parse_factory`).
        fingerprint: optional string naming the encoder that produced the features; stored and
            checked on ``add``, ``search`` and ``load`` so features of different encoders never mix.
        nlist: IVF list count of ``kind="ivf"`` (default: chosen from the first batch added; a
            factory string names its own).
        nprobe: IVF lists visited per query (default ``max(8, nlist // 128)``, at most ``nlist``).
        train_size: IVF training sample size (default ``min(n, max(40 * nlist, 40 * 2**bits))``).
        hnsw_m: HNSW neighbours per node of ``kind="hnsw"``. ``ef_construction`` / ``ef_search``:
            HNSW beam widths.
        use_gpu: ``None`` = use faiss-gpu when installed and a GPU is present (flat and ivf only).

    ``metadata`` is a dict of JSON values saved with the index (``uit-reid index build`` records
    the checkpoint and image folder there).
    """

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        *,
        fingerprint: str | None = None,
        nlist: int | None = None,
        nprobe: int | None = None,
        train_size: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        use_gpu: bool | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(kind, str):
            raise ValueError(f"kind must be one of {KIND_ALIASES} or a FAISS factory string, got {kind!r}")
        if kind not in KIND_ALIASES:
            try:
                layout = parse_factory(kind, int(dim))
            except ValueError as err:
                raise ValueError(f"kind must be one of {KIND_ALIASES} or a supported FAISS factory string: {err}") from None
            if layout.kind == "hnsw":
                hnsw_m = layout.hnsw_m
            if layout.kind == "ivf":
                nlist = layout.nlist
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise TypeError(f"fingerprint must be a string or None, got {type(fingerprint).__name__}")
        for name, value in (("nlist", nlist), ("nprobe", nprobe), ("train_size", train_size)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if hnsw_m < 2 or ef_construction < 1 or ef_search < 1:
            raise ValueError(
                f"hnsw_m (>=2), ef_construction and ef_search (>=1) out of range: {hnsw_m}, "
                f"{ef_construction}, {ef_search}"
            )
        self.dim = int(dim)
        self.kind = kind
        self.family = kind if kind in KIND_ALIASES else parse_factory(kind, self.dim).kind
        """"flat", "ivf" or "hnsw": which search parameters apply (IVF-PQ and OPQ kinds are "ivf")."""
        self.fingerprint = fingerprint
        self.nlist = nlist
        self._nprobe = nprobe
        self.train_size = train_size
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self._ef_search = ef_search
        self.seed = seed
        self.use_gpu = _gpu_available() if use_gpu is None else bool(use_gpu)
        if self.use_gpu and not _gpu_available():
            raise RuntimeError("use_gpu=True but faiss-gpu or a GPU is not available")
        self._id_type: str | None = None  # "int" or "str", fixed by the first add
        self._slot_ids: list[Any] = []  # slot -> user id, None once removed
        self._id_to_slot: dict[Any, int] = {}
        self._index: Any = None  # CPU index, built lazily (IVF needs data to pick nlist)
        self._gpu_resources: Any = None
        self._gpu_index: Any = None  # search-only GPU copy
        self._table: np.ndarray | None = None  # cached slot -> id array for mapping search results
        self._removed = 0  # slots emptied by remove (HNSW keeps their vectors, masked at search)
        self._read_only = False  # memory-mapped from a file: searchable, not changeable
        self.metadata: dict[str, Any] = {}

    @property
    def factory(self) -> str | None:
        """The FAISS factory string this index is built from (None for ``"ivf"`` before nlist is known)."""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if self.kind == "ivf":
            return None if self.nlist is None else f"IVF{self.nlist},Flat"
        return self.kind

    @property
    def layout(self) -> Layout | None:
        """The structure of the FAISS index (`faiss_check.Layout`), None until the factory string is known."""
        return None if self.factory is None else parse_factory(self.factory, self.dim)

    # -- construction -------------------------------------------------------------------------
    def _build(self, sample: np.ndarray) -> None:
        """Create the FAISS index from the factory string and train it on (a sample of) ``sample``."""
        n = sample.shape[0]
        if self.kind == "ivf" and self.nlist is None:
            self.nlist = default_nlist(n)
        layout = self.layout
        assert layout is not None
        base = faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT)
        if layout.kind == "ivf":
            if self.nlist > n:
                raise ValueError(f"{self.kind} needs at least nlist={self.nlist} vectors to train, got {n}")
            if self._nprobe is None:
                self._nprobe = min(self.nlist, max(8, self.nlist // 128))
            default_size = max(40 * self.nlist, 40 * (1 << layout.pq_bits) if layout.pq_m else 0)
            size = min(n, self.train_size or default_size)
            rng = np.random.default_rng(self.seed)
            train = sample if size >= n else sample[np.sort(rng.choice(n, size, replace=False))]
            ivf = faiss.downcast_index(faiss.extract_index_ivf(base))
            ivf.cp.seed = self.seed
            if layout.pq_m:
                ivf.pq.cp.seed = self.seed
                # the factory turns on polysemous training, which only serves Hamming-distance
                # filtering (never used here) and took ~40 s of the 47 s a 4,000-vector IVF16,PQ8 took
                ivf.do_polysemous_training = False
            logger.info("training %s on %d of %d vectors", self.factory, size, n)
            base.train(train)
            index = base
        else:
            if layout.kind == "hnsw":
                faiss.downcast_index(base).hnsw.efConstruction = self.ef_construction
            index = faiss.IndexIDMap2(base)
            index.own_fields = True
            base.this.disown()
        self._index = index
        self._apply_search_parameters()

    def _apply_search_parameters(self) -> None:
        """Set nprobe / efSearch on the FAISS index through ``faiss.ParameterSpace``."""
        if self._index is None or self.family == "flat":
            return
        name, value = ("nprobe", self._nprobe) if self.family == "ivf" else ("efSearch", self._ef_search)
        faiss.ParameterSpace().set_index_parameter(self._index, name, float(value))
        self._gpu_index = None

    def _gpu_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search a GPU copy of the CPU index (made on first use, dropped on add/remove/nprobe).

        The CPU index stays the source of truth, so add/remove/save never depend on GPU support.
        Flat: the inner IndexFlatIP goes to the GPU and positions are mapped back to slots.
        """
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        if self._gpu_index is None:
            source = faiss.downcast_index(self._index.index) if self.family == "flat" else self._index
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, source)
            if self.family == "ivf":
                faiss.GpuParameterSpace().set_index_parameter(self._gpu_index, "nprobe", self._nprobe)
        scores, found = self._gpu_index.search(q, k)
        if self.family == "flat":
            labels = faiss.vector_to_array(self._index.id_map)
            found = np.where(found >= 0, labels[np.maximum(found, 0)], -1)
        return scores, found

    # -- properties -----------------------------------------------------------------------------
    @property
    def nprobe(self) -> int | None:
        """IVF lists visited per query (None until the IVF is trained, for other kinds always None)."""
        return self._nprobe if self.family == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.family != "ivf":
            raise ValueError(f"nprobe applies to kind='ivf' (and IVF factory strings), this index is {self.kind!r}")
        if value < 1:
            raise ValueError(f"nprobe must be positive, got {value}")
        self._nprobe = int(value)
        self._apply_search_parameters()

    @property
    def ef_search(self) -> int | None:
        """HNSW search beam width (None for other kinds)."""
        return self._ef_search if self.family == "hnsw" else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self.family != "hnsw":
            raise ValueError(f"ef_search applies to kind='hnsw', this index is {self.kind!r}")
        if value < 1:
            raise ValueError(f"ef_search must be positive, got {value}")
        self._ef_search = int(value)
        self._apply_search_parameters()

    @property
    def id_type(self) -> str | None:
        """``"int"`` or ``"str"`` once ids were added, else None."""
        return self._id_type

    def __len__(self) -> int:
        return len(self._id_to_slot)

    @property
    def read_only(self) -> bool:
        """True when the lists are memory-mapped from the file (``load(..., mmap=True)``): search only."""
        return self._read_only

    @property
    def num_slots(self) -> int:
        """Slots handed out so far (removed ones included): the next vector added gets this slot."""
        return len(self._slot_ids)

    def __contains__(self, id_: object) -> bool:
        return self._key(id_) in self._id_to_slot if self._id_type else False

    def __repr__(self) -> str:
        params = {k: v for k, v in self.parameters().items() if v is not None}
        return f"GalleryIndex(dim={self.dim}, kind={self.kind!r}, size={len(self)}, {params})"

    def parameters(self) -> dict[str, Any]:
        """The kind-specific parameters stored in the file's header."""
        if self.family == "ivf":
            return {
                "nlist": self.nlist,
                "nprobe": self._nprobe,
                "train_size": self.train_size,
                "seed": self.seed,
            }
        if self.family == "hnsw":
            return {"m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self._ef_search}
        return {}

    def ids(self) -> list[Any]:
        """The ids currently in the index, in insertion order."""
        return [i for i in self._slot_ids if i is not None]

    # -- input checks ---------------------------------------------------------------------------
    def _check_writable(self, what: str) -> None:
        if self._read_only:
            raise ValueError(f"cannot {what}: this index is memory-mapped read-only; load it with mmap=False to change it")

    def _features(self, x: Any, name: str) -> np.ndarray:
        """(n, dim) float32 C-contiguous L2-normalised copy of ``x``."""
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
        arr = np.array(x, dtype=np.float32, order="C", copy=True)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n, {self.dim}), got shape {arr.shape}")
        if arr.shape[1] != self.dim:
            raise ValueError(f"{name} has dimension {arr.shape[1]} but the index has dim {self.dim}")
        # one pass for the squared norms; a NaN/inf anywhere in a row makes its squared norm non-finite
        sq = np.einsum("ij,ij->i", arr, arr, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(sq))
        if bad.size:
            raise ValueError(f"{name} contains NaN, infinite or overflowing values, e.g. in row {bad[0]}")
        zero = np.flatnonzero(sq == 0)
        if zero.size:
            raise ValueError(f"{name} has all-zero rows (cannot be L2-normalised), e.g. row {zero[0]}")
        arr /= np.sqrt(sq).astype(np.float32)[:, None]
        return arr

    def _check_fingerprint(self, fingerprint: str | None, where: str) -> None:
        if fingerprint is None or fingerprint == self.fingerprint:
            return
        if self.fingerprint is None and where == "add" and not self._slot_ids:
            return  # a fresh index takes the fingerprint of its first add
        if self.fingerprint is None:
            raise ValueError(
                f"encoder fingerprint mismatch in {where}: the index records no encoder fingerprint, so "
                f"features of {fingerprint!r} cannot be checked against it; rebuild the index with one"
            )
        if fingerprint != self.fingerprint:
            raise ValueError(
                f"encoder fingerprint mismatch in {where}: index was built with {self.fingerprint!r}, "
                f"got {fingerprint!r}"
            )

    def _key(self, id_: Any) -> Any:
        if self._id_type == "int":
            if isinstance(id_, (str, bytes)):
                raise TypeError(f"this index has integer ids, got string id {id_!r}")
            if isinstance(id_, (bool, np.bool_)) or not isinstance(id_, (int, np.integer)):
                raise TypeError(f"ids must be integers, got {type(id_).__name__} id {id_!r}")
            return int(id_)
        if not isinstance(id_, str):
            raise TypeError(f"this index has string ids, got {type(id_).__name__} id {id_!r}")
        return id_

    def _normalise_ids(self, ids: Any, n: int) -> tuple[list[Any], str]:
        """Validate ``ids`` (all ints or all strings, unique, new); return them as a list and their kind."""
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of ids, got a single string")
        if isinstance(ids, np.ndarray):
            ids = ids.astype(np.int64) if ids.dtype.kind in "iu" and ids.dtype != np.uint64 else ids
            if ids.ndim != 1:
                raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
            if ids.dtype.kind in "iu":
                if ids.dtype == np.uint64 and ids.size and ids.max() >= 2**63:
                    raise ValueError("ids must fit in int64")
                kind, values = "int", ids.astype(np.int64).tolist()
            elif ids.dtype.kind in "UO":
                values = list(ids.tolist())
                kind = "str" if all(isinstance(v, str) for v in values) else "bad"
            else:
                raise TypeError(f"ids must be int64 numbers or strings, got dtype {ids.dtype}")
        else:
            values = list(ids)
            if all(isinstance(v, str) for v in values):
                kind = "str"
            elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
                kind, values = "int", [int(v) for v in values]
            else:
                kind = "bad"
        if kind == "bad":
            raise TypeError("ids must be all integers or all strings")
        if len(values) != n:
            raise ValueError(f"ids has {len(values)} entries but features has {n} rows")
        if self._id_type is not None and values and kind != self._id_type:
            names = {"int": "integer", "str": "string"}
            raise TypeError(f"this index has {names[self._id_type]} ids, got {names[kind]} ids")
        if kind == "int" and values and not all(-(2**63) <= v < 2**63 for v in (min(values), max(values))):
            raise ValueError("ids must fit in int64")
        unique = set(values)
        if len(unique) != len(values):
            raise ValueError("ids contains duplicates")
        if kind == "int" and -1 in unique:
            raise ValueError("ids must not contain -1: search results use it for 'no result'")
        clash = unique & self._id_to_slot.keys() if self._id_to_slot else set()
        if clash:
            raise ValueError(f"ids already in the index: {sorted(clash)[:5]}")
        return values, kind

    # -- operations -----------------------------------------------------------------------------
    def train(self, features: Any) -> None:
        """Train an IVF index on ``features`` (optional: ``add`` trains on its first batch)."""
        if self.family != "ivf":
            raise ValueError(f"train applies to IVF kinds, this index is {self.kind!r}")
        if self._index is not None:
            raise ValueError("the index is already trained")
        self._build(self._features(features, "features"))

    def add(self, features: Any, ids: Any, *, fingerprint: str | None = None) -> None:
        """Add (n, dim) ``features`` (torch or numpy, normalised here) under ``ids`` (ints or strings)."""
        self._check_fingerprint(fingerprint, "add")
        self._check_writable("add")
        x = self._features(features, "features")
        values, kind = self._normalise_ids(ids, x.shape[0])
        if x.shape[0] == 0:
            return
        if self._index is None:
            self._build(x)
        start = len(self._slot_ids)
        slots = np.arange(start, start + x.shape[0], dtype=np.int64)
        self._index.add_with_ids(x, slots)
        self._gpu_index = self._table = None
        if self.fingerprint is None and fingerprint is not None:
            self.fingerprint = fingerprint
        self._id_type = kind
        self._slot_ids.extend(values)
        self._id_to_slot.update(zip(values, range(start, start + len(values))))

    def remove(self, ids: Any) -> int:
        """Remove ``ids`` from the index; unknown ids raise ``KeyError``. Returns the number removed."""
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        if isinstance(ids, np.ndarray):
            if ids.dtype.kind not in "iuUO":
                raise TypeError(f"ids must be integers or strings, got dtype {ids.dtype}")
            ids = ids.reshape(-1).tolist()
        if isinstance(ids, (str, int, np.integer, float, np.floating)):
            ids = [ids]
        self._check_writable("remove")
        keys = [self._key(i) for i in ids] if self._id_type else list(ids)
        missing = [k for k in keys if k not in self._id_to_slot]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        slots = np.array(sorted({self._id_to_slot[k] for k in keys}), dtype=np.int64)
        if slots.size == 0:
            return 0
        if self.family != "hnsw":  # HNSW cannot delete: its removed slots are masked at search time
            removed = self._index.remove_ids(faiss.IDSelectorBatch(slots))
            self._gpu_index = None
            if removed != slots.size:
                raise RuntimeError(f"faiss removed {removed} vectors, expected {slots.size}")
        self._table = None
        self._removed += int(slots.size)
        for s in slots.tolist():
            del self._id_to_slot[self._slot_ids[s]]
            self._slot_ids[s] = None
        return int(slots.size)

    def search(
        self,
        queries: Any,
        k: int = 10,
        *,
        fingerprint: str | None = None,
        rerank: Callable[[np.ndarray], np.ndarray] | None = None,
        candidates: int = 100,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine matches of each query.

        ``k`` is capped at the number of items in the index, so results have ``min(k, len(index))``
        columns (0 for an empty index) and memory never grows with ``k`` alone.
        Returns ``(scores, ids)``, both (n, min(k, len)): scores float32 descending, ids int64 or, for
        string ids, an object array; an approximate index that finds fewer matches fills the rest
        with ``-1`` (``None``) and ``-inf``.

        ``rerank``: exact re-ranking for compressed kinds. The index proposes ``max(k, candidates)``
        slots per query; ``rerank(slots)`` returns their full vectors (shape ``slots.shape + (dim,)``,
        e.g. `uit_reid.retrieval.shards.ShardVectors` over the embedding files the index was built
        from) and the top ``k`` by exact cosine are returned, with exact scores.
        """
        self._check_fingerprint(fingerprint, "search")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = self._features(queries, "queries")
        n = q.shape[0]
        k = min(int(k), len(self))
        if self._index is None or k == 0:
            scores, slots = np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
            return self._map_results(scores, slots)
        wanted = k if rerank is None else min(max(k, int(candidates)), len(self))
        params = None
        refs: tuple[Any, ...] = ()
        if self.family == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = self._ef_search
            dead = np.flatnonzero(np.array([i is None for i in self._slot_ids])) if self._removed else []
            if len(dead):
                # removed slots are masked; the selectors must outlive the search call
                batch = faiss.IDSelectorBatch(dead)
                not_dead = faiss.IDSelectorNot(batch)
                params.sel = not_dead
                refs = (batch, not_dead)
        scores, slots = self._search_batched(q, wanted, params)
        del refs
        if rerank is not None:
            scores, slots = self._rerank(q, scores, slots, k, rerank)
        return self._map_results(scores, slots)

    def _rerank(
        self, q: np.ndarray, scores: np.ndarray, slots: np.ndarray, k: int, vectors: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine of each candidate from its full vector; the top ``k`` of them, descending."""
        found = slots >= 0
        full = np.asarray(vectors(np.where(found, slots, 0)), dtype=np.float32)
        if full.shape != slots.shape + (self.dim,):
            raise ValueError(f"rerank returned shape {full.shape}, expected {slots.shape + (self.dim,)}")
        norms = np.linalg.norm(full, axis=-1)
        exact = np.einsum("qcd,qd->qc", full, q) / np.maximum(norms, 1e-12)
        exact = np.where(found, exact, -np.inf).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(slots, order, 1)

    def _search_batched(self, q: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        if self.use_gpu and self.family != "hnsw":
            return self._gpu_search(q, k)
        if self.family == "flat":
            return self._flat_search(q, k)
        if params is None:
            return self._index.search(q, k)
        return self._index.search(q, k, params=params)

    def _flat_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search as torch matrix products over blocks of the stored vectors, merged top-k.

        FAISS's own flat search takes a non-BLAS loop for small query batches and 1,024-row gallery
        blocks (tunable only through process-global settings); a torch matmul over 16,384-row blocks
        of the vectors FAISS stores (read in place, not copied) was ~3x faster here and changes nothing
        outside this call. Ties keep the lower slot first.
        """
        flat = faiss.downcast_index(self._index.index)
        total = flat.ntotal
        xb = faiss.rev_swig_ptr(flat.get_xb(), total * self.dim).reshape(total, self.dim)
        labels = faiss.rev_swig_ptr(self._index.id_map.data(), total)
        qt = torch.from_numpy(q)
        best_s = torch.full((q.shape[0], 0), -torch.inf)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.int64)
        for start in range(0, total, _FLAT_GALLERY_BLOCK):
            block = torch.from_numpy(xb[start : start + _FLAT_GALLERY_BLOCK])
            s = qt @ block.T
            kk = min(k, s.shape[1])
            top_s, top_i = torch.topk(s, kk, dim=1)
            best_s = torch.cat([best_s, top_s], 1)
            best_i = torch.cat([best_i, top_i + start], 1)
            if best_s.shape[1] > k:
                # stable order on (score desc, position asc) so ties resolve like a full sort
                order = np.lexsort((best_i.numpy(), -best_s.numpy()), axis=1)[:, :k]
                best_s = torch.from_numpy(np.take_along_axis(best_s.numpy(), order, 1))
                best_i = torch.from_numpy(np.take_along_axis(best_i.numpy(), order, 1))
        order = np.lexsort((best_i.numpy(), -best_s.numpy()), axis=1)
        scores = np.take_along_axis(best_s.numpy(), order, 1)
        positions = np.take_along_axis(best_i.numpy(), order, 1)
        return scores, np.asarray(labels)[positions].astype(np.int64)

    def _map_results(self, scores: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(scores, dtype=np.float32).copy()
        empty = slots < 0
        scores[empty] = -np.inf
        if self._table is None:  # last entry answers "no result" (slot -1)
            if self._id_type == "str":
                self._table = np.array([*self._slot_ids, None], dtype=object)
            else:
                self._table = np.array(
                    [-1 if i is None else i for i in self._slot_ids] + [-1], dtype=np.int64
                )
        return scores, self._table[np.where(empty, -1, slots)]

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to the single file ``path``, atomically (see the module docstring)."""
        path = Path(path)
        if self._index is None:
            raise ValueError("cannot save an empty, untrained index: add features first")
        self._check_writable("save")
        data = faiss.serialize_index(self._index)
        id_map = _encode_id_map(self._slot_ids, self._id_type)
        meta = {
            "format": _FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "kind": self.kind,
            "factory": self.factory,
            "metric": "cosine",
            "normalization": "l2",
            "parameters": self.parameters(),
            "fingerprint": self.fingerprint,
            "metadata": self.metadata,
            "id_type": self._id_type,
            "slots": len(self._slot_ids),
            "id_map_bytes": len(id_map),
            "id_map_sha256": hashlib.sha256(id_map).hexdigest(),
            "index_bytes": int(data.nbytes),
            "index_sha256": hashlib.sha256(data).hexdigest(),
            "faiss_version": faiss.__version__,
        }
        meta["header_sha256"] = _header_digest(meta)
        header = json.dumps(meta).encode("utf-8")
        atomic_write_bytes(path, _MAGIC + _LEN.pack(len(header)) + header, id_map, memoryview(data))
        logger.info("saved %s index with %d items to %s", self.kind, len(self), path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_dim: int | None = None,
        expected_fingerprint: str | None = None,
        use_gpu: bool | None = None,
        mmap: bool = False,
    ) -> GalleryIndex:
        """Load an index written by `save`, checking it fully before FAISS reads it (module docstring).

        ``mmap=True`` keeps an IVF kind's lists in the file, mapped read-only (the index can then be
        searched but not changed); other kinds are read into memory either way.
        Raises ``FileNotFoundError`` (no file), `IndexFormatError` (not a GalleryIndex file, truncated,
        edited, corrupted or hand-crafted) or ``ValueError`` (dimension or fingerprint mismatch).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no index file at {path}")
        with open(path, "rb") as fh:
            before = os.fstat(fh.fileno())
            meta, slot_ids, offset = _read_head(path, fh, before.st_size)
            if expected_dim is not None and meta["dim"] != expected_dim:
                raise ValueError(
                    f"dimension mismatch: index at {path} has dim {meta['dim']}, expected {expected_dim}"
                )
            fp = meta["fingerprint"]
            if expected_fingerprint is not None and fp != expected_fingerprint:
                raise ValueError(
                    f"encoder fingerprint mismatch: index at {path} was built with {fp!r}, "
                    f"expected {expected_fingerprint!r}"
                )
            layout = parse_factory(meta["factory"], meta["dim"])
            live = [s for s, v in enumerate(slot_ids) if v is not None]
            if meta["index_bytes"] == 0:
                raise IndexFormatError(f"index file {path} holds no FAISS bytes")
            with mmap_module.mmap(fh.fileno(), 0, access=mmap_module.ACCESS_READ) as mapped:
                view = memoryview(mapped)[offset:]
                try:
                    problem, labels = _check_faiss_bytes(view, layout, meta)
                finally:
                    view.release()
            if problem is not None:
                raise IndexFormatError(f"index file {path} {problem}")
            expected = np.arange(len(slot_ids)) if layout.kind == "hnsw" else np.array(live, dtype=np.int64)
            if labels.size != expected.size or not np.array_equal(np.sort(labels), expected):
                raise IndexFormatError(
                    f"index file {path}: its {labels.size} stored vectors do not match the id map's "
                    f"{expected.size} slots (edited or corrupted)"
                )
            mapped_lists = mmap and layout.kind == "ivf"
            reader = faiss.FileIOReader(str(path))
            skip = np.empty(offset, np.uint8)
            if reader(faiss.swig_ptr(skip), 1, offset) != offset:
                raise IndexFormatError(f"index file {path} is truncated")
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mapped_lists else 0
            index = faiss.read_index(reader, flags)
            del reader
            after = os.stat(path)
            if (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
                raise IndexFormatError(f"index file {path} was replaced while it was loaded: load it again")
        params = dict(meta["parameters"])
        kwargs: dict[str, Any] = {}
        if layout.kind == "ivf":
            kwargs = {k: params.get(k) for k in ("nlist", "nprobe", "train_size")}
            kwargs["seed"] = params.get("seed", 0)
        elif layout.kind == "hnsw":
            kwargs = {
                "hnsw_m": params.get("m"),
                "ef_construction": params.get("ef_construction"),
                "ef_search": params.get("ef_search"),
            }
        try:
            obj = cls(meta["dim"], meta["kind"], fingerprint=fp, use_gpu=use_gpu, **kwargs)
            if obj.factory != meta["factory"]:
                raise ValueError(f"kind {meta['kind']!r} does not build {meta['factory']!r}")
        except (TypeError, ValueError) as err:
            raise IndexFormatError(f"index file {path} has invalid parameters: {err}") from None
        obj._id_type = meta["id_type"]
        obj._slot_ids = slot_ids
        obj._id_to_slot = {slot_ids[s]: s for s in live}
        obj._removed = len(slot_ids) - len(live)
        obj.metadata = meta["metadata"]
        obj._index = index
        obj._read_only = mapped_lists
        obj._apply_search_parameters()
        return obj


_REQUIRED = {
    "dim": int,
    "kind": str,
    "factory": str,
    "parameters": dict,
    "fingerprint": (str, type(None)),
    "metadata": dict,
    "id_type": (str, type(None)),
    "slots": int,
    "id_map_bytes": int,
    "id_map_sha256": str,
    "index_bytes": int,
    "index_sha256": str,
    "normalization": str,
    "header_sha256": str,
}
_LIVE_DEAD = 0
_LIVE = 1


def _header_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _sha256(data: memoryview) -> str:
    digest = hashlib.sha256()
    for start in range(0, len(data), _HASH_CHUNK):
        digest.update(data[start : start + _HASH_CHUNK])
    return digest.hexdigest()


def _encode_id_map(slot_ids: list[Any], id_type: str | None) -> bytes:
    """The binary id map: one live byte per slot, then int64 ids or uint64 offsets + UTF-8 text."""
    n = len(slot_ids)
    live = np.fromiter((v is not None for v in slot_ids), dtype=np.uint8, count=n)
    if id_type == "str":
        encoded = [b"" if v is None else v.encode("utf-8", "surrogatepass") for v in slot_ids]
        offsets = np.zeros(n + 1, dtype="<u8")
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return live.tobytes() + offsets.tobytes() + b"".join(encoded)
    values = np.fromiter((0 if v is None else v for v in slot_ids), dtype="<i8", count=n)
    return live.tobytes() + values.tobytes()


def _decode_id_map(path: Path, raw: bytes, slots: int, id_type: str | None) -> list[Any]:
    """Parse and check the binary id map: right sizes, live flags 0/1, ids of the type, none twice."""
    if id_type not in ("int", "str", None):
        raise IndexFormatError(f"index file {path}: unknown id_type {id_type!r}")
    if slots < 0 or len(raw) < slots:
        raise IndexFormatError(f"index file {path}: the id map is shorter than its {slots} slots")
    live = np.frombuffer(raw, dtype=np.uint8, count=slots)
    if ((live != _LIVE) & (live != _LIVE_DEAD)).any():
        raise IndexFormatError(f"index file {path}: the id map's live flags are not 0 or 1")
    alive = live.astype(bool)
    body = memoryview(raw)[slots:]
    if id_type is None:
        if slots or len(body):
            raise IndexFormatError(f"index file {path}: unknown id_type None for a non-empty id map")
        return []
    if id_type == "int":
        if len(body) != 8 * slots:
            raise IndexFormatError(f"index file {path}: the id map holds {len(body)} id bytes for {slots} slots")
        values = np.frombuffer(body, dtype="<i8")
        if (values[alive] == -1).any():
            raise IndexFormatError(f"index file {path}: the id map holds the id -1, which means 'no result'")
        ids: list[Any] = values.tolist()
    else:
        if len(body) < 8 * (slots + 1):
            raise IndexFormatError(f"index file {path}: the id map's string offsets are truncated")
        offsets = np.frombuffer(body, dtype="<u8", count=slots + 1).astype(np.int64)
        text = bytes(body[8 * (slots + 1) :])
        lengths = np.diff(offsets)
        if offsets[0] != 0 or (lengths < 0).any() or offsets[-1] != len(text) or (lengths[~alive] != 0).any():
            raise IndexFormatError(f"index file {path}: the id map's string offsets are out of range")
        try:
            ids = [text[a:b].decode("utf-8", "surrogatepass") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        except UnicodeDecodeError:
            raise IndexFormatError(f"index file {path}: the id map holds ids that are not str ids (invalid UTF-8)") from None
    for s in np.flatnonzero(~alive).tolist():
        ids[s] = None
    if int(alive.sum()) != len({v for v in ids if v is not None}):
        raise IndexFormatError(f"index file {path}: the id map names the same id twice (edited or corrupted)")
    return ids


def _check_faiss_bytes(view: memoryview, layout: Layout, meta: dict[str, Any]) -> tuple[str | None, np.ndarray]:
    """(what is wrong with the FAISS bytes or None, their labels). Returns rather than raises, so no
    traceback keeps a slice of a memory map alive after the map is closed."""
    if _sha256(view) != meta["index_sha256"]:
        return "does not match its checksum (corrupted?)", np.zeros(0, np.int64)
    try:
        return None, check_index_bytes(view, layout, meta["dim"])
    except FaissBytesError as err:
        message = f"is not a {meta['kind']} index as saved: {err}"
    return message, np.zeros(0, np.int64)


def _read_exact(fh: Any, n: int, path: Path, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise IndexFormatError(f"index file {path} is truncated: its {what} claims {n} bytes")
    return data


def _read_head(path: Path, fh: Any, size: int) -> tuple[dict[str, Any], list[Any], int]:
    """Header and id map of a saved index (all checked); returns them and the FAISS bytes' offset."""
    if _read_exact_or_short(fh, len(_MAGIC)) != _MAGIC:
        raise IndexFormatError(
            f"{path} is not a GalleryIndex file (or was saved by an older version: rebuild it)"
        )
    start = len(_MAGIC) + _LEN.size
    if size < start:
        raise IndexFormatError(f"index file {path} is truncated")
    (header_len,) = _LEN.unpack(fh.read(_LEN.size))
    if header_len > size - start:
        raise IndexFormatError(f"index file {path} is truncated: its header claims {header_len} bytes")
    try:
        meta = json.loads(_read_exact(fh, header_len, path, "header").decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"index file {path} has a header that is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT_NAME:
        raise IndexFormatError(f"{path} is not a GalleryIndex file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"{path} has format_version {version!r}; this library reads {FORMAT_VERSION}: rebuild it")
    for key, types in _REQUIRED.items():
        if key not in meta:
            raise IndexFormatError(f"index file {path}: header lacks field {key!r}")
        if not isinstance(meta[key], types) or isinstance(meta[key], bool):
            raise IndexFormatError(f"index file {path}: header field {key!r} has the wrong type")
    if meta["header_sha256"] != _header_digest(meta):
        raise IndexFormatError(f"index file {path}: its header does not match its checksum (edited or corrupted)")
    if meta["dim"] < 1 or meta["normalization"] != "l2":
        raise IndexFormatError(f"index file {path}: unsupported kind, dim or normalization in its header")
    try:
        parse_factory(meta["factory"], meta["dim"])
    except ValueError as err:
        raise IndexFormatError(f"index file {path}: unsupported kind in its header: {err}") from None
    left = size - start - header_len
    if meta["id_map_bytes"] < 0 or meta["index_bytes"] < 0 or meta["id_map_bytes"] + meta["index_bytes"] != left:
        raise IndexFormatError(
            f"index file {path} is truncated or replaced: {left} bytes after the header, the header says "
            f"{meta['id_map_bytes']} + {meta['index_bytes']}"
        )
    raw = _read_exact(fh, meta["id_map_bytes"], path, "id map")
    if hashlib.sha256(raw).hexdigest() != meta["id_map_sha256"]:
        raise IndexFormatError(f"index file {path}: its id map does not match its checksum (edited or corrupted)")
    slot_ids = _decode_id_map(path, raw, meta["slots"], meta["id_type"])
    return meta, slot_ids, start + header_len + meta["id_map_bytes"]


def _read_exact_or_short(fh: Any, n: int) -> bytes:
    return fh.read(n)
