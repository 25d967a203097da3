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
(a learnt rotation first), the kinds autofaiss and LAION-5B use (``"OPQ64_256,IVF65536_HNSW32,PQ64"``:
OPQ down to 256 dimensions, an HNSW graph over the list centroids, ``PQ64x4fs`` fast-scan codes), and
``search(..., rerank=...)`` re-scores the top candidates exactly from the full vectors (see
`uit_reid.retrieval.shards`). `uit_reid.retrieval.factory_string` holds the grammar.

Ids are int64 numbers or strings (image paths, say); the two cannot be mixed in one index. Internally
every vector gets a sequential int64 *slot* as its FAISS label; the index keeps the slot -> id map.

Ids live in an `uit_reid.retrieval.idmap.IdMap` (compact arrays, no Python object per id).

Saved form: ``save(path)`` writes ONE file, replaced with one ``os.replace``, so a crash or a kill
at any instant leaves either the complete old index or the complete new one under ``path``; ``load``
checks it fully before FAISS reads a byte (`uit_reid.retrieval.index_file`). The checksums catch
accidents; the structural checks keep a hand-crafted file from making FAISS allocate or read out of
bounds. Neither makes the *contents* trustworthy: someone who ships you an index decides what it
returns. With ``load(..., mmap=True)`` IVF lists stay mapped from the file (``faiss.IO_FLAG_MMAP``),
so a large index is never read into memory, let alone twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from uit_reid._errors import EncoderMismatchError
from uit_reid.retrieval.factory_string import Layout, parse_factory
from uit_reid.retrieval.idmap import IdMap
from uit_reid.retrieval.index_build import (
    build_faiss_index,
    default_nlist,
    default_nprobe,
    set_search_parameter,
)
from uit_reid.retrieval.index_file import (
    FORMAT_VERSION,
    IndexFile,
    IndexFormatError,
    read_index_file,
    write_index_file,
)
from uit_reid.retrieval.ondisk import ONDISK_FIELD

__all__ = ["FORMAT_VERSION", "KIND_ALIASES", "GalleryIndex", "IndexFormatError", "default_nlist"]

logger = logging.getLogger(__name__)

KIND_ALIASES = ("flat", "ivf", "hnsw")
"""Short names for the three uncompressed kinds (any supported FAISS factory string works too)."""
_FLAT_GALLERY_BLOCK = 16384


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class GalleryIndex:
    """Cosine-similarity gallery index over FAISS (see module docstring).

    Args:
        dim: feature dimension.
        kind: ``"flat"`` (exact), ``"ivf"``, ``"hnsw"`` or a FAISS factory string such as
            ``"IVF4096,PQ64"`` or ``"OPQ64_256,IVF65536_HNSW32,PQ64x4fs"`` (`uit_reid.retrieval.factory_string`).
        fingerprint: optional string naming the encoder that produced the features; stored and
            checked on ``add``, ``search`` and ``load`` so features of different encoders never mix.
        nlist: IVF list count of ``kind="ivf"`` (default: chosen from the first batch added; a
            factory string names its own).
        nprobe: IVF lists visited per query (default ``max(8, nlist // 128)``, at most ``nlist``).
        train_size: IVF training sample size (default ``min(n, max(40 * nlist, 40 * 2**bits))``).
        hnsw_m: HNSW neighbours per node of ``kind="hnsw"``. ``ef_construction`` / ``ef_search``:
            HNSW beam widths (of the graph, or of the ``IVF<n>_HNSW<m>`` coarse quantizer, whose
            search beam is at least ``nprobe``).
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
        layout = _check_arguments(dim, kind, fingerprint, nlist, nprobe, train_size, hnsw_m, ef_construction, ef_search)
        if layout is not None and layout.kind == "hnsw":
            hnsw_m = layout.hnsw_m
        if layout is not None and layout.kind == "ivf":
            nlist = layout.nlist
        self.dim = int(dim)
        self.kind = kind
        self.family = kind if layout is None else layout.kind
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
        self._ids = IdMap()  # slot -> user id (type fixed by the first add), removed slots marked
        self._index: Any = None  # CPU index, built lazily (IVF needs data to pick nlist)
        self._gpu_resources: Any = None
        self._gpu_index: Any = None  # search-only GPU copy
        self._live_slots: np.ndarray | None = None  # cached position -> slot (ids_at, search_positions)
        self._read_only = False  # memory-mapped from a file: searchable, not changeable
        self._on_disk = False  # lists and ids in files beside the index file (`uit_reid.retrieval.ondisk`)
        self._mapped_files: tuple[Path, ...] = ()
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
        """The structure of the FAISS index (`factory_string.Layout`), None until the factory string is known."""
        return None if self.factory is None else parse_factory(self.factory, self.dim)

    # -- construction -------------------------------------------------------------------------
    def _build(self, sample: np.ndarray) -> None:
        """Create the FAISS index from the factory string and train it on (a sample of) ``sample``."""
        if self.kind == "ivf" and self.nlist is None:
            self.nlist = default_nlist(sample.shape[0])
        layout = self.layout
        assert layout is not None and self.factory is not None
        if layout.kind == "ivf" and self._nprobe is None:
            self._nprobe = default_nprobe(self.nlist or layout.nlist)
        self._index = build_faiss_index(
            self.factory, layout, self.dim, sample, train_size=self.train_size, seed=self.seed,
            ef_construction=self.ef_construction,
        )
        self._apply_search_parameters()

    @property
    def _hnsw_quantizer(self) -> bool:
        """True for ``IVF<n>_HNSW<m>`` kinds: an HNSW graph picks the lists, tuned by ``ef_search``."""
        layout = self.layout
        return layout is not None and layout.quantizer_hnsw_m > 0

    def _apply_search_parameters(self) -> None:
        """Set nprobe / efSearch (and the coarse quantizer's efSearch) through ``faiss.ParameterSpace``."""
        if self._index is None or self.family == "flat":
            return
        set_search_parameter(self._index, self.family, self._nprobe if self.family == "ivf" else self._ef_search)
        if self.family == "ivf" and self._hnsw_quantizer:
            # the graph returns the nprobe nearest lists: a beam narrower than nprobe cannot
            set_search_parameter(self._index, "quantizer", max(self._ef_search, self._nprobe or 1))
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
        """HNSW search beam width, of the graph or of an ``IVF<n>_HNSW<m>`` quantizer (None for other kinds)."""
        return self._ef_search if self.family == "hnsw" or self._hnsw_quantizer else None

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if self.ef_search is None:
            raise ValueError(f"ef_search applies to kind='hnsw' and IVF<n>_HNSW<m> kinds, this index is {self.kind!r}")
        if value < 1:
            raise ValueError(f"ef_search must be positive, got {value}")
        self._ef_search = int(value)
        self._apply_search_parameters()

    @property
    def id_type(self) -> str | None:
        """``"int"`` or ``"str"`` once ids were added, else None."""
        return self._ids.id_type

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def read_only(self) -> bool:
        """True when the lists are memory-mapped from the file (``load(..., mmap=True)``): search only."""
        return self._read_only

    @property
    def mapped_files(self) -> tuple[Path, ...]:
        """The files this index reads while it searches (memory-mapped at load; empty when held in memory):
        a search after one changed in place reads garbage or ends the process (SIGBUS)."""
        return self._mapped_files

    @property
    def num_slots(self) -> int:
        """Slots handed out so far (removed ones included): the next vector added gets this slot."""
        return self._ids.num_slots

    def __contains__(self, id_: object) -> bool:
        return bool(self._ids.slots_of([self._key(id_)])[0] >= 0) if self.id_type else False

    def __repr__(self) -> str:
        params = {k: v for k, v in self.parameters().items() if v is not None}
        return f"GalleryIndex(dim={self.dim}, kind={self.kind!r}, size={len(self)}, {params})"

    def parameters(self) -> dict[str, Any]:
        """The kind-specific parameters stored in the file's header."""
        if self.family == "ivf":
            ivf = {"nlist": self.nlist, "nprobe": self._nprobe, "train_size": self.train_size, "seed": self.seed}
            if self._hnsw_quantizer:
                ivf.update(ef_construction=self.ef_construction, ef_search=self._ef_search)
            return ivf
        if self.family == "hnsw":
            return {"m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self._ef_search}
        return {}

    def ids(self) -> list[Any]:
        """The ids currently in the index, in insertion order (one Python object each: see `ids_at`)."""
        return self._ids.ids()

    def _all_live(self) -> bool:
        """True when no slot was removed, so slots and positions coincide."""
        return len(self._ids) == self._ids.num_slots

    def _positions(self) -> np.ndarray:
        if self._live_slots is None:
            self._live_slots = self._ids.live_slots()
        return self._live_slots

    def ids_at(self, positions: Any) -> np.ndarray:
        """Ids of the items at ``positions`` in `ids` order (any shape; -1 gives -1 / None), no list built.

        Raises ``IndexError`` for a position outside ``0..len(self) - 1``.
        """
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.max() >= len(self) or positions.min() < -1):
            raise IndexError(f"positions must be in 0..{len(self) - 1} (or -1), got {positions.min()}..{positions.max()}")
        if self._all_live():  # a position is its slot: no position -> slot array (a billion slots: 8 GB)
            slots = positions
        else:
            slots = np.where(positions >= 0, self._positions()[np.maximum(positions, 0)] if len(self) else -1, -1)
        return self._ids.ids_at(slots)

    # -- input checks ---------------------------------------------------------------------------
    def _check_writable(self, what: str) -> None:
        if self._read_only and self._on_disk:
            raise ValueError(f"cannot {what}: this is an on-disk index (lists and ids mapped from files beside it); "
                             "build it again with the new shards ('uit-reid index build --on-disk')")
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
        if self.fingerprint is None and where == "add" and not self.num_slots:
            return  # a fresh index takes the fingerprint of its first add
        if self.fingerprint is None:
            raise EncoderMismatchError(
                f"encoder fingerprint mismatch in {where}: the index records no encoder fingerprint, so "
                f"features of {fingerprint!r} cannot be checked against it; rebuild the index with one"
            )
        if fingerprint != self.fingerprint:
            raise EncoderMismatchError(
                f"encoder fingerprint mismatch in {where}: index was built with {self.fingerprint!r}, "
                f"got {fingerprint!r}"
            )

    def _key(self, id_: Any) -> Any:
        if self.id_type == "int":
            if isinstance(id_, (str, bytes)):
                raise TypeError(f"this index has integer ids, got string id {id_!r}")
            if isinstance(id_, (bool, np.bool_)) or not isinstance(id_, (int, np.integer)):
                raise TypeError(f"ids must be integers, got {type(id_).__name__} id {id_!r}")
            return int(id_)
        if not isinstance(id_, str):
            raise TypeError(f"this index has string ids, got {type(id_).__name__} id {id_!r}")
        return id_

    def _normalise_ids(self, ids: Any, n: int, look_up: bool = True) -> tuple[list[Any], str]:
        """Validate ``ids`` (all ints or all strings, unique, and new unless ``look_up`` is False because
        the caller checked that); return them as a list and their kind."""
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
        if self.id_type is not None and values and kind != self.id_type:
            names = {"int": "integer", "str": "string"}
            raise TypeError(f"this index has {names[self.id_type]} ids, got {names[kind]} ids")
        if kind == "int" and values and not all(-(2**63) <= v < 2**63 for v in (min(values), max(values))):
            raise ValueError("ids must fit in int64")
        unique = set(values)
        if len(unique) != len(values):
            raise ValueError("ids contains duplicates")
        if kind == "int" and -1 in unique:
            raise ValueError("ids must not contain -1: search results use it for 'no result'")
        found = self._ids.slots_of(values) if look_up and len(self._ids) else np.zeros(0, np.int64)
        clash = [v for v, s in zip(values, found.tolist()) if s >= 0]
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

    def _reserve(self, blocks: Iterable[Any]) -> None:
        """Size each IVF list for the vectors of ``blocks`` before they are added (the same vectors, in any split).

        FAISS grows a list like a ``std::vector``, by doubling and copying, so a streamed build's lists
        held more than their entries (a replay of a 10M build's pattern, 4,096 lists and 8 entries per
        list per add: 1.37x the entries' bytes resident; benchmarks/ivf_list_growth.py). Counting each
        list's vectors first (one extra pass of the coarse quantizer) lets every list be allocated
        once, at its final size. Other kinds, untrained or read-only indexes: nothing to do.
        """
        if self._index is None or self.family != "ivf" or self.read_only:
            return
        ivf = faiss.extract_index_ivf(self._index)
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        if not isinstance(lists, faiss.ArrayInvertedLists):
            return
        outer = faiss.downcast_index(self._index)  # OPQ kinds rotate vectors before the IVF sees them
        chain = outer.chain if isinstance(outer, faiss.IndexPreTransform) else None
        transforms = [chain.at(t) for t in range(chain.size())] if chain is not None else []
        counts = np.zeros(ivf.nlist, np.int64)
        for block in blocks:
            x = self._features(block, "features")
            for transform in transforms:
                x = transform.apply(x)
            _, assigned = ivf.quantizer.search(x, 1)
            counts += np.bincount(assigned.ravel(), minlength=ivf.nlist)
        for list_no in np.flatnonzero(counts).tolist():
            size = lists.list_size(list_no)
            lists.resize(list_no, size + int(counts[list_no]))  # allocates exactly ...
            lists.resize(list_no, size)  # ... and keeps that capacity for the adds

    def add(self, features: Any, ids: Any, *, fingerprint: str | None = None) -> None:
        """Add (n, dim) ``features`` (torch or numpy, normalised here) under ``ids`` (ints or strings)."""
        self._add(features, ids, fingerprint, known_new=False)

    def _add(self, features: Any, ids: Any, fingerprint: str | None, known_new: bool) -> None:
        """`add`; ``known_new``: the caller has proved the ids absent from the index (`IdMap.none_of`), so
        they are not looked up (the lookup table costs 16 bytes per id and a copy of itself per add)."""
        self._check_fingerprint(fingerprint, "add")
        self._check_writable("add")
        x = self._features(features, "features")
        values, kind = self._normalise_ids(ids, x.shape[0], look_up=not known_new)
        if x.shape[0] == 0:
            return
        if self._index is None:
            self._build(x)
        start = self.num_slots
        self._index.add_with_ids(x, np.arange(start, start + x.shape[0], dtype=np.int64))
        self._gpu_index = self._live_slots = None
        if self.fingerprint is None and fingerprint is not None:
            self.fingerprint = fingerprint
        self._ids.append(values, kind)

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
        keys = [self._key(i) for i in ids] if self.id_type else list(ids)
        found = self._ids.slots_of(keys) if self.id_type else np.full(len(keys), -1, np.int64)
        missing = [k for k, s in zip(keys, found.tolist()) if s < 0]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        slots = np.unique(found)
        if slots.size == 0:
            return 0
        if self.family != "hnsw":  # HNSW cannot delete: its removed slots are masked at search time
            removed = self._index.remove_ids(faiss.IDSelectorBatch(slots))
            self._gpu_index = None
            if removed != slots.size:
                raise RuntimeError(f"faiss removed {removed} vectors, expected {slots.size}")
        self._live_slots = None
        self._ids.remove_slots(slots)
        return int(slots.size)

    def search(
        self,
        queries: Any,
        k: int = 10,
        *,
        fingerprint: str | None = None,
        rerank: Callable[[np.ndarray], np.ndarray] | None = None,
        candidates: int = 100,
        positions: bool = False,
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

        ``positions=True`` returns each hit's position in `ids` order (int64, -1 for none) instead of
        its id, so a caller that numbers the items (the service) needs no id -> number table.
        """
        self._check_fingerprint(fingerprint, "search")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = self._features(queries, "queries")
        n = q.shape[0]
        k = min(int(k), len(self))
        if self._index is None or k == 0:
            scores, slots = np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
            return self._map_results(scores, slots, positions)
        wanted = k if rerank is None else min(max(k, int(candidates)), len(self))
        params = None
        refs: tuple[Any, ...] = ()
        if self.family == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = self._ef_search
            dead = self._ids.dead_slots()
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
        return self._map_results(scores, slots, positions)

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
        if self.use_gpu and self.family != "hnsw" and not self._hnsw_quantizer and not self.layout.fast_scan:
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

    def _map_results(self, scores: np.ndarray, slots: np.ndarray, positions: bool) -> tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(scores, dtype=np.float32).copy()
        empty = slots < 0
        scores[empty] = -np.inf
        if not positions:
            return scores, self._ids.ids_at(slots)
        if self._all_live():
            return scores, np.where(empty, -1, slots).astype(np.int64)
        return scores, np.where(empty, -1, np.searchsorted(self._positions(), slots)).astype(np.int64)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to the single file ``path``, atomically (`uit_reid.retrieval.index_file`)."""
        if self._index is None:
            raise ValueError("cannot save an empty, untrained index: add features first")
        self._check_writable("save")
        fields = {
            "dim": self.dim,
            "kind": self.kind,
            "factory": self.factory,
            "metric": "cosine",
            "normalization": "l2",
            "parameters": self.parameters(),
            "fingerprint": self.fingerprint,
            "metadata": self.metadata,
        }
        write_index_file(Path(path), fields, self._ids, self._index)
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
        """Load an index written by `save`, checking it fully before FAISS reads it.

        ``mmap=True`` keeps an IVF kind's lists in the file, mapped read-only (the index can then be
        searched but not changed); other kinds are read into memory either way. An on-disk index
        (`uit_reid.retrieval.ondisk`: lists and ids in files beside ``path``) is always mapped.
        Raises ``FileNotFoundError`` (no file), `IndexFormatError` (not a GalleryIndex file, truncated,
        edited, corrupted or hand-crafted), ``ValueError`` (dimension mismatch) or
        `uit_reid._errors.EncoderMismatchError` (a ValueError: fingerprint mismatch).
        """
        path = Path(path)
        saved = read_index_file(path, expected_dim=expected_dim, expected_fingerprint=expected_fingerprint, mmap=mmap)
        try:
            obj = cls(saved.meta["dim"], saved.meta["kind"], fingerprint=saved.meta["fingerprint"], use_gpu=use_gpu,
                      **_saved_arguments(saved))
            if obj.factory != saved.meta["factory"]:
                raise ValueError(f"kind {saved.meta['kind']!r} does not build {saved.meta['factory']!r}")
        except (TypeError, ValueError) as err:
            raise IndexFormatError(f"index file {path} has invalid parameters: {err}") from None
        obj._ids = saved.ids
        obj.metadata = saved.meta["metadata"]
        obj._index = saved.index
        obj._read_only = saved.mapped
        obj._on_disk = ONDISK_FIELD in saved.meta
        spec = saved.meta.get(ONDISK_FIELD) or {}  # an on-disk index maps its lists and ids too
        side = tuple(path.with_name(spec[k]) for k in ("ivfdata", "ids")) if obj._on_disk else ()
        obj._mapped_files = (path, *side) if saved.mapped else ()
        obj._apply_search_parameters()
        return obj


def _saved_arguments(saved: IndexFile) -> dict[str, Any]:
    """The constructor arguments a saved header's parameters give for its kind."""
    params = dict(saved.meta["parameters"])
    if saved.layout.kind == "ivf":
        ivf = {**{k: params.get(k) for k in ("nlist", "nprobe", "train_size")}, "seed": params.get("seed", 0)}
        if saved.layout.quantizer_hnsw_m:
            ivf.update(ef_construction=params.get("ef_construction"), ef_search=params.get("ef_search"))
        return ivf
    if saved.layout.kind == "hnsw":
        return {"hnsw_m": params.get("m"), "ef_construction": params.get("ef_construction"),
                "ef_search": params.get("ef_search")}
    return {}


def _check_arguments(
    dim: Any, kind: Any, fingerprint: Any, nlist: int | None, nprobe: int | None, train_size: int | None,
    hnsw_m: int, ef_construction: int, ef_search: int,
) -> Layout | None:
    """Refuse bad constructor arguments naming the argument; the factory string's layout (None for an alias)."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(kind, str):
        raise ValueError(f"kind must be one of {KIND_ALIASES} or a FAISS factory string, got {kind!r}")
    layout = None
    if kind not in KIND_ALIASES:
        try:
            layout = parse_factory(kind, int(dim))
        except ValueError as err:
            raise ValueError(f"kind must be one of {KIND_ALIASES} or a supported FAISS factory string: {err}") from None
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise TypeError(f"fingerprint must be a string or None, got {type(fingerprint).__name__}")
    for name, value in (("nlist", nlist), ("nprobe", nprobe), ("train_size", train_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if hnsw_m < 2 or ef_construction < 1 or ef_search < 1:
        raise ValueError(
            f"hnsw_m (>=2), ef_construction and ef_search (>=1) out of range: {hnsw_m}, {ef_construction}, {ef_search}"
        )
    return layout
