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

from uit_reid.retrieval._index_checks import (
    KIND_ALIASES,
    check_arguments,
    check_fingerprint,
    id_key,
    id_list,
    normalise_ids,
    normalised_features,
)
from uit_reid.retrieval._index_search import (
    exact_rerank,
    flat_search,
    gpu_available,
    gpu_copy,
    gpu_search,
    hnsw_search_parameters,
)
from uit_reid.retrieval.factory_string import Layout, parse_factory
from uit_reid.retrieval.idmap import IdMap
from uit_reid.retrieval.index_build import (
    add_preassigned,
    alias_factory,
    build_faiss_index,
    default_nlist,
    default_nprobe,
    reserve_ivf_lists,
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
        layout = check_arguments(dim, kind, fingerprint, nlist, nprobe, train_size, hnsw_m, ef_construction, ef_search)
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
        self.use_gpu = gpu_available() if use_gpu is None else bool(use_gpu)
        if self.use_gpu and not gpu_available():
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
        return alias_factory(self.kind, self.nlist, self.hnsw_m)

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
        """Search a GPU copy of the CPU index (`_index_search.gpu_copy`: made on first use, dropped on
        add/remove/nprobe)."""
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        if self._gpu_index is None:
            self._gpu_index = gpu_copy(self._gpu_resources, self._index, self.family, self._nprobe)
        return gpu_search(self._gpu_index, self._index, self.family, q, k)

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
        return bool(self._ids.slots_of([id_key(id_, self.id_type)])[0] >= 0) if self.id_type else False

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
        """(n, dim) float32 C-contiguous L2-normalised copy of ``x`` (`_index_checks.normalised_features`)."""
        return normalised_features(x, self.dim, name)

    def _check_fingerprint(self, fingerprint: str | None, where: str) -> None:
        check_fingerprint(self.fingerprint, fingerprint, where, fresh=not self.num_slots)

    # -- operations -----------------------------------------------------------------------------
    def train(self, features: Any) -> None:
        """Train an IVF index on ``features`` (optional: ``add`` trains on its first batch)."""
        if self.family != "ivf":
            raise ValueError(f"train applies to IVF kinds, this index is {self.kind!r}")
        if self._index is not None:
            raise ValueError("the index is already trained")
        self._build(self._features(features, "features"))

    def _reserve(self, blocks: Iterable[Any]) -> np.ndarray | None:
        """Size each IVF list for the vectors of ``blocks`` before they are added, in the same blocks
        (`index_build.reserve_ivf_lists`); returns each vector's list, for `_add`'s ``assigned``, or None
        (other kinds, untrained or read-only indexes: nothing done)."""
        if self._index is None or self.family != "ivf" or self.read_only:
            return None
        return reserve_ivf_lists(self._index, (self._features(block, "features") for block in blocks))

    def add(self, features: Any, ids: Any, *, fingerprint: str | None = None) -> None:
        """Add (n, dim) ``features`` (torch or numpy, normalised here) under ``ids`` (ints or strings)."""
        self._add(features, ids, fingerprint, known_new=False)

    def _add(
        self, features: Any, ids: Any, fingerprint: str | None, known_new: bool, assigned: np.ndarray | None = None
    ) -> None:
        """`add`; ``known_new``: the caller has proved the ids absent from the index (`IdMap.none_of`), so
        they are not looked up (the lookup table costs 16 bytes per id and a copy of itself per add);
        ``assigned``: each vector's IVF list, as `_reserve` returned it (the quantizer is not run again)."""
        self._check_fingerprint(fingerprint, "add")
        self._check_writable("add")
        x = self._features(features, "features")
        values, kind = normalise_ids(ids, x.shape[0], self._ids, look_up=not known_new)
        if x.shape[0] == 0:
            return
        if self._index is None:
            self._build(x)
        start = self.num_slots
        slots = np.arange(start, start + x.shape[0], dtype=np.int64)
        if assigned is None:
            self._index.add_with_ids(x, slots)
        else:
            add_preassigned(self._index, x, slots, assigned)
        self._gpu_index = self._live_slots = None
        if self.fingerprint is None and fingerprint is not None:
            self.fingerprint = fingerprint
        self._ids.append(values, kind)

    def remove(self, ids: Any) -> int:
        """Remove ``ids`` from the index; unknown ids raise ``KeyError``. Returns the number removed."""
        ids = id_list(ids)
        self._check_writable("remove")
        keys = [id_key(i, self.id_type) for i in ids] if self.id_type else list(ids)
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
        # HNSW cannot delete: removed slots are masked, by selectors that must outlive the search call
        params, refs = hnsw_search_parameters(self._ef_search, self._ids.dead_slots()) if self.family == "hnsw" else (None, ())
        scores, slots = self._search_batched(q, wanted, params)
        del refs
        if rerank is not None:
            scores, slots = exact_rerank(q, slots, k, rerank, self.dim)
        return self._map_results(scores, slots, positions)

    def _search_batched(self, q: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        if self.use_gpu and self.family != "hnsw" and not self._hnsw_quantizer and not self.layout.fast_scan:
            return self._gpu_search(q, k)
        if self.family == "flat":
            return flat_search(self._index, q, k, self.dim)
        if params is None:
            return self._index.search(q, k)
        return self._index.search(q, k, params=params)

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
        return _from_saved(cls, path, saved, use_gpu)


def _from_saved(cls: type[GalleryIndex], path: Path, saved: IndexFile, use_gpu: bool | None) -> GalleryIndex:
    """The index of a checked file: built empty from its header, then given its ids, FAISS index and
    mapped files (an on-disk index maps its lists and ids beside ``path`` too)."""
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

