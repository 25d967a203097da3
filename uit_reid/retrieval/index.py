"""GalleryIndex: a cosine-similarity FAISS index over gallery features, with ids, removal and safe saving.

Vectors are L2-normalised on the way in (queries too), so inner product is cosine similarity and
encoders can hand over raw pooled features. Three kinds:

- ``"flat"``: exact search (``IndexFlatIP``).
- ``"ivf"``: inverted lists (``IndexIVFFlat``); ``nlist`` is picked from the size of the first batch
  added (about ``2 * sqrt(n)``, a power of two) and the coarse quantiser is trained on a sample of it.
  ``nprobe`` trades recall for speed.
- ``"hnsw"``: a graph (``IndexHNSWFlat``); ``ef_search`` trades recall for speed. HNSW cannot delete
  vectors, so removed ids are masked at search time with an id selector.

Ids are int64 numbers or strings (image paths, say); the two cannot be mixed in one index. Internally
every vector gets a sequential int64 *slot* as its FAISS label; the index keeps the slot -> id map.

Saved form: ``save(path)`` writes ONE file, replaced with one ``os.replace``, so a crash or a kill
at any instant leaves either the complete old index or the complete new one under ``path``. The file
is an 8-byte magic, a little-endian uint64 header length, a JSON header (format version, dim, kind,
parameters, normalisation, encoder fingerprint, user metadata, the slot -> id map, the byte length
and SHA-256 of the FAISS bytes, and a SHA-256 of the header itself) and the FAISS index bytes
(``faiss.serialize_index``, never pickle).

Loading checks, in this order and before FAISS sees a byte: the magic and sizes, the header
checksum, the fields and the id map (unique ids, the right type), the FAISS bytes' checksum, and
then the FAISS bytes' structure (`uit_reid.retrieval.faiss_check`: one of the three layouts this
class writes, the header's dimension, every declared size within the file, graph links in range, the
stored labels exactly the live slots). The checksums catch accidents; the structural checks keep a
hand-crafted file from making FAISS allocate or read out of bounds. Neither makes the *contents*
trustworthy: someone who ships you an index decides what it returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from uit_reid.io import atomic_write_bytes
from uit_reid.retrieval.faiss_check import FaissBytesError, check_index_bytes

__all__ = ["FORMAT_VERSION", "GalleryIndex", "IndexFormatError", "default_nlist"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Version of the saved index format (header ``format_version``); 2 is the single-file format."""
_FORMAT_NAME = "uit_reid.GalleryIndex"
_MAGIC = b"UITGIDX\n"
_LEN = struct.Struct("<Q")
_KINDS = ("flat", "ivf", "hnsw")
_FLAT_GALLERY_BLOCK = 16384
_FLAT_LOCK = threading.Lock()


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
        kind: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"``.
        fingerprint: optional string naming the encoder that produced the features; stored and
            checked on ``add``, ``search`` and ``load`` so features of different encoders never mix.
        nlist: IVF list count (default: chosen from the first batch added).
        nprobe: IVF lists visited per query (default ``max(8, nlist // 128)``, at most ``nlist``).
        train_size: IVF training sample size (default ``min(n, 40 * nlist)``).
        hnsw_m: HNSW neighbours per node. ``ef_construction`` / ``ef_search``: HNSW beam widths.
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
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
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
        self.metadata: dict[str, Any] = {}

    # -- construction -------------------------------------------------------------------------
    def _build(self, sample: np.ndarray) -> None:
        if self.kind == "flat":
            base = faiss.IndexFlatIP(self.dim)
        elif self.kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = self.ef_construction
            base.hnsw.efSearch = self._ef_search
        else:
            n = sample.shape[0]
            if self.nlist is None:
                self.nlist = default_nlist(n)
            if self.nlist > n:
                raise ValueError(f"ivf needs at least nlist={self.nlist} vectors to train, got {n}")
            if self._nprobe is None:
                self._nprobe = min(self.nlist, max(8, self.nlist // 128))
            quantizer = faiss.IndexFlatIP(self.dim)
            base = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            base.own_fields = True
            quantizer.this.disown()
            size = min(n, self.train_size or 40 * self.nlist)
            rng = np.random.default_rng(self.seed)
            train = sample if size >= n else sample[np.sort(rng.choice(n, size, replace=False))]
            base.cp.seed = self.seed
            logger.info("training IVF: nlist=%d on %d of %d vectors", self.nlist, size, n)
            base.train(train)
            base.nprobe = self._nprobe
        index = base if self.kind == "ivf" else faiss.IndexIDMap2(base)
        if self.kind != "ivf":
            index.own_fields = True
            base.this.disown()
        self._index = index

    def _gpu_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search a GPU copy of the CPU index (made on first use, dropped on add/remove/nprobe).

        The CPU index stays the source of truth, so add/remove/save never depend on GPU support.
        Flat: the inner IndexFlatIP goes to the GPU and positions are mapped back to slots.
        """
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        if self._gpu_index is None:
            source = faiss.downcast_index(self._index.index) if self.kind == "flat" else self._index
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, source)
            if self.kind == "ivf":
                faiss.GpuParameterSpace().set_index_parameter(self._gpu_index, "nprobe", self._nprobe)
        scores, found = self._gpu_index.search(q, k)
        if self.kind == "flat":
            labels = faiss.vector_to_array(self._index.id_map)
            found = np.where(found >= 0, labels[np.maximum(found, 0)], -1)
        return scores, found

    # -- properties -----------------------------------------------------------------------------
    @property
    def nprobe(self) -> int | None:
        """IVF lists visited per query (None until the IVF is trained, for other kinds always None)."""
        return self._nprobe if self.kind == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind != "ivf":
            raise ValueError(f"nprobe applies to kind='ivf', this index is {self.kind!r}")
        if value < 1:
            raise ValueError(f"nprobe must be positive, got {value}")
        self._nprobe = int(value)
        if self._index is not None:
            self._index.nprobe = self._nprobe
            self._gpu_index = None

    @property
    def ef_search(self) -> int | None:
        """HNSW search beam width (None for other kinds)."""
        return self._ef_search if self.kind == "hnsw" else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self.kind != "hnsw":
            raise ValueError(f"ef_search applies to kind='hnsw', this index is {self.kind!r}")
        if value < 1:
            raise ValueError(f"ef_search must be positive, got {value}")
        self._ef_search = int(value)
        if self._index is not None:
            faiss.downcast_index(self._index.index).hnsw.efSearch = self._ef_search

    @property
    def id_type(self) -> str | None:
        """``"int"`` or ``"str"`` once ids were added, else None."""
        return self._id_type

    def __len__(self) -> int:
        return len(self._id_to_slot)

    def __contains__(self, id_: object) -> bool:
        return self._key(id_) in self._id_to_slot if self._id_type else False

    def __repr__(self) -> str:
        params = {k: v for k, v in self.parameters().items() if v is not None}
        return f"GalleryIndex(dim={self.dim}, kind={self.kind!r}, size={len(self)}, {params})"

    def parameters(self) -> dict[str, Any]:
        """The kind-specific parameters stored in the sidecar."""
        if self.kind == "ivf":
            return {
                "nlist": self.nlist,
                "nprobe": self._nprobe,
                "train_size": self.train_size,
                "seed": self.seed,
            }
        if self.kind == "hnsw":
            return {"m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self._ef_search}
        return {}

    def ids(self) -> list[Any]:
        """The ids currently in the index, in insertion order."""
        return [i for i in self._slot_ids if i is not None]

    # -- input checks ---------------------------------------------------------------------------
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
        if self.kind != "ivf":
            raise ValueError(f"train applies to kind='ivf', this index is {self.kind!r}")
        if self._index is not None:
            raise ValueError("the index is already trained")
        self._build(self._features(features, "features"))

    def add(self, features: Any, ids: Any, *, fingerprint: str | None = None) -> None:
        """Add (n, dim) ``features`` (torch or numpy, normalised here) under ``ids`` (ints or strings)."""
        self._check_fingerprint(fingerprint, "add")
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
        keys = [self._key(i) for i in ids] if self._id_type else list(ids)
        missing = [k for k in keys if k not in self._id_to_slot]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        slots = np.array(sorted({self._id_to_slot[k] for k in keys}), dtype=np.int64)
        if slots.size == 0:
            return 0
        if self.kind != "hnsw":  # HNSW cannot delete: its removed slots are masked at search time
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
        self, queries: Any, k: int = 10, *, fingerprint: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine matches of each query.

        ``k`` is capped at the number of items in the index, so results have ``min(k, len(index))``
        columns (0 for an empty index) and memory never grows with ``k`` alone.
        Returns ``(scores, ids)``, both (n, min(k, len)): scores float32 descending, ids int64 or, for
        string ids, an object array; an approximate index that finds fewer matches fills the rest
        with ``-1`` (``None``) and ``-inf``.
        """
        self._check_fingerprint(fingerprint, "search")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = self._features(queries, "queries")
        n = q.shape[0]
        k = min(int(k), len(self))
        if self._index is None or k == 0:
            scores, slots = np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        else:
            params = None
            refs: tuple[Any, ...] = ()
            if self.kind == "hnsw":
                params = faiss.SearchParametersHNSW()
                params.efSearch = self._ef_search
                dead = np.flatnonzero(np.array([i is None for i in self._slot_ids])) if self._removed else []
                if len(dead):
                    # removed slots are masked; the selectors must outlive the search call
                    batch = faiss.IDSelectorBatch(dead)
                    not_dead = faiss.IDSelectorNot(batch)
                    params.sel = not_dead
                    refs = (batch, not_dead)
            scores, slots = self._search_batched(q, k, params)
            del refs
        return self._map_results(scores, slots)

    def _search_batched(self, q: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        if self.use_gpu and self.kind != "hnsw":
            return self._gpu_search(q, k)
        if self.kind == "flat":
            return self._flat_search(q, k)
        if params is None:
            return self._index.search(q, k)
        return self._index.search(q, k, params=params)

    def _flat_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search, always through BLAS and with larger gallery blocks than faiss's defaults.

        faiss 1.15 takes a non-BLAS loop when (queries x dim) is under 128,000 (5x slower than BLAS
        at 200 x 20k here) and, on the BLAS path, 1,024-row gallery blocks, which made it ~2x slower
        than 16,384-row blocks at 1M x 512-d with 1,000 queries on 2 cores. These settings are
        process-global in faiss, so they are changed for this call only.
        """
        with _FLAT_LOCK:
            saved = (faiss.cvar.distance_compute_blas_database_bs, faiss.cvar.distance_compute_blas_threshold)
            faiss.cvar.distance_compute_blas_database_bs = _FLAT_GALLERY_BLOCK
            faiss.cvar.distance_compute_blas_threshold = 1
            try:
                return self._index.search(q, k)
            finally:
                (faiss.cvar.distance_compute_blas_database_bs, faiss.cvar.distance_compute_blas_threshold) = (
                    saved
                )

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
        data = faiss.serialize_index(self._index)
        meta = {
            "format": _FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "kind": self.kind,
            "metric": "cosine",
            "normalization": "l2",
            "parameters": self.parameters(),
            "fingerprint": self.fingerprint,
            "metadata": self.metadata,
            "id_type": self._id_type,
            "slot_ids": self._slot_ids,
            "index_bytes": int(data.nbytes),
            "index_sha256": hashlib.sha256(data).hexdigest(),
            "faiss_version": faiss.__version__,
        }
        meta["header_sha256"] = _header_digest(meta)
        header = json.dumps(meta).encode("utf-8")
        atomic_write_bytes(path, _MAGIC + _LEN.pack(len(header)) + header, memoryview(data))
        logger.info("saved %s index with %d items to %s", self.kind, len(self), path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_dim: int | None = None,
        expected_fingerprint: str | None = None,
        use_gpu: bool | None = None,
    ) -> GalleryIndex:
        """Load an index written by `save`, checking it fully before FAISS reads it (module docstring).

        Raises ``FileNotFoundError`` (no file), `IndexFormatError` (not a GalleryIndex file, truncated,
        edited, corrupted or hand-crafted) or ``ValueError`` (dimension or fingerprint mismatch).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no index file at {path}")
        meta, data = _read_file(path)
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
        slot_ids = meta["slot_ids"]
        live = [s for s, v in enumerate(slot_ids) if v is not None]
        try:
            labels = check_index_bytes(data, meta["kind"], meta["dim"])
        except FaissBytesError as err:
            raise IndexFormatError(f"index file {path} is not a {meta['kind']} index as saved: {err}") from None
        expected = np.arange(len(slot_ids)) if meta["kind"] == "hnsw" else np.array(live, dtype=np.int64)
        if labels.size != expected.size or not np.array_equal(np.sort(labels), expected):
            raise IndexFormatError(
                f"index file {path}: its {labels.size} stored vectors do not match the id map's "
                f"{expected.size} slots (edited or corrupted)"
            )
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        params = dict(meta["parameters"])
        kwargs: dict[str, Any] = {}
        if meta["kind"] == "ivf":
            kwargs = {k: params.get(k) for k in ("nlist", "nprobe", "train_size")}
            kwargs["seed"] = params.get("seed", 0)
        elif meta["kind"] == "hnsw":
            kwargs = {
                "hnsw_m": params["m"],
                "ef_construction": params["ef_construction"],
                "ef_search": params["ef_search"],
            }
        try:
            obj = cls(meta["dim"], meta["kind"], fingerprint=fp, use_gpu=use_gpu, **kwargs)
        except (TypeError, ValueError) as err:
            raise IndexFormatError(f"index file {path} has invalid parameters: {err}") from None
        obj._id_type = meta["id_type"]
        obj._slot_ids = list(slot_ids)
        obj._id_to_slot = {slot_ids[s]: s for s in live}
        obj._removed = len(slot_ids) - len(live)
        obj.metadata = meta["metadata"]
        obj._index = index
        if obj.kind == "ivf":
            obj._index.nprobe = obj._nprobe
        return obj


_REQUIRED = {
    "dim": int,
    "kind": str,
    "parameters": dict,
    "fingerprint": (str, type(None)),
    "metadata": dict,
    "id_type": (str, type(None)),
    "slot_ids": list,
    "index_bytes": int,
    "index_sha256": str,
    "normalization": str,
    "header_sha256": str,
}


def _header_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _read_file(path: Path) -> tuple[dict[str, Any], memoryview]:
    """Header and FAISS bytes of a saved index, every field and checksum verified."""
    raw = path.read_bytes()
    if raw[: len(_MAGIC)] != _MAGIC:
        raise IndexFormatError(
            f"{path} is not a GalleryIndex file (or was saved by an older version: rebuild it)"
        )
    start = len(_MAGIC) + _LEN.size
    if len(raw) < start:
        raise IndexFormatError(f"index file {path} is truncated")
    (header_len,) = _LEN.unpack_from(raw, len(_MAGIC))
    if header_len > len(raw) - start:
        raise IndexFormatError(f"index file {path} is truncated: its header claims {header_len} bytes")
    try:
        meta = json.loads(raw[start : start + header_len].decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"index file {path} has a header that is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT_NAME:
        raise IndexFormatError(f"{path} is not a GalleryIndex file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"{path} has format_version {version!r}; this library reads {FORMAT_VERSION}")
    for key, types in _REQUIRED.items():
        if key not in meta:
            raise IndexFormatError(f"index file {path}: header lacks field {key!r}")
        if not isinstance(meta[key], types) or isinstance(meta[key], bool):
            raise IndexFormatError(f"index file {path}: header field {key!r} has the wrong type")
    if meta["header_sha256"] != _header_digest(meta):
        raise IndexFormatError(f"index file {path}: its header does not match its checksum (edited or corrupted)")
    if meta["kind"] not in _KINDS or meta["dim"] < 1 or meta["normalization"] != "l2":
        raise IndexFormatError(f"index file {path}: unsupported kind, dim or normalization in its header")
    _check_slot_ids(path, meta["slot_ids"], meta["id_type"])
    data = memoryview(raw)[start + header_len :]
    if len(data) != meta["index_bytes"]:
        raise IndexFormatError(
            f"index file {path} is truncated or replaced: {len(data)} index bytes, header says {meta['index_bytes']}"
        )
    if hashlib.sha256(data).hexdigest() != meta["index_sha256"]:
        raise IndexFormatError(f"index file {path} does not match its checksum (corrupted?)")
    return meta, data


def _check_slot_ids(path: Path, slot_ids: list[Any], id_type: str | None) -> None:
    """The id map: all ids of the declared type, no id twice."""
    live = [v for v in slot_ids if v is not None]
    if id_type not in ("int", "str", None) or (id_type is None and live):
        raise IndexFormatError(f"index file {path}: unknown id_type {id_type!r}")
    if id_type == "int":
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v != -1 and -(2**63) <= v < 2**63 for v in live)
    else:
        ok = all(isinstance(v, str) for v in live)
    if not ok:
        raise IndexFormatError(f"index file {path}: the id map holds ids that are not {id_type} ids")
    if len(set(live)) != len(live):
        raise IndexFormatError(f"index file {path}: the id map names the same id twice (edited or corrupted)")
