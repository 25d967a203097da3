"""Building a gallery's FAISS index from a factory string: list counts, training sample, search knobs.

Every kind is made with ``faiss.index_factory`` (inner product, since vectors are L2-normalised) and
tuned through ``faiss.ParameterSpace``, so no process-global FAISS setting is touched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import faiss
import numpy as np

from uit_reid.retrieval.factory_string import Layout

__all__ = ["OPQ_ITERATIONS", "OPQ_TRAIN_POINTS", "add_preassigned", "alias_factory", "build_faiss_index", "default_nlist", "default_nprobe",
           "reserve_ivf_lists", "set_search_parameter"]

logger = logging.getLogger(__name__)

OPQ_TRAIN_POINTS = 16384
"""Rows the OPQ rotation is trained on (FAISS's default: 65,536). Each of its iterations trains a PQ
on them; at FAISS's defaults a 512-d OPQ64 ran for more than 20 minutes on a loaded 2-core CPU."""
OPQ_ITERATIONS = 20
"""Rotation / PQ alternations of OPQ training (FAISS's default: 50)."""


def default_nlist(n: int) -> int:
    """IVF list count for a gallery of ``n`` vectors: ~2*sqrt(n) as a power of two, >= 39 points per list."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    target = 2 ** round(math.log2(max(1.0, 2.0 * math.sqrt(n))))
    return int(max(1, min(target, n // 39)))


def default_nprobe(nlist: int) -> int:
    """IVF lists visited per query unless told: ``max(8, nlist // 128)``, at most ``nlist``."""
    return min(nlist, max(8, nlist // 128))


def build_faiss_index(
    factory: str, layout: Layout, dim: int, sample: np.ndarray, *, train_size: int | None, seed: int, ef_construction: int
) -> Any:
    """The FAISS index ``factory`` builds, trained on (a seeded sample of) ``sample`` for IVF kinds.

    IVF kinds are trained on ``train_size`` rows (default ``max(40 * nlist, 40 * 2**bits)``, the
    sizes FAISS asks for); flat and HNSW kinds are wrapped in an ``IndexIDMap2`` so slots are labels.
    """
    n = sample.shape[0]
    base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if layout.kind != "ivf":
        if layout.kind == "hnsw":
            faiss.downcast_index(base).hnsw.efConstruction = ef_construction
        index = faiss.IndexIDMap2(base)
        index.own_fields = True
        base.this.disown()
        return index
    default_size = max(40 * layout.nlist, 40 * (1 << layout.pq_bits) if layout.pq_m else 0)
    size = min(n, train_size or default_size)
    needed = max(layout.nlist, (1 << layout.pq_bits) if layout.pq_m else 0)
    if size < needed:
        raise ValueError(
            f"{factory} needs at least {needed} training vectors (nlist={layout.nlist}"
            + (f", 2**{layout.pq_bits} PQ centroids" if layout.pq_m else "") + f"), got {size}"
        )
    rng = np.random.default_rng(seed)
    train = sample if size >= n else sample[np.sort(rng.choice(n, size, replace=False))]
    if layout.opq_m:
        opq = faiss.downcast_VectorTransform(faiss.downcast_index(base).chain.at(0))
        opq.max_train_points, opq.niter = OPQ_TRAIN_POINTS, OPQ_ITERATIONS
    ivf = faiss.downcast_index(faiss.extract_index_ivf(base))
    ivf.cp.seed = seed
    if layout.quantizer_hnsw_m:
        faiss.downcast_index(ivf.quantizer).hnsw.efConstruction = ef_construction
    if layout.pq_m:
        ivf.pq.cp.seed = seed
    if layout.pq_m and not layout.fast_scan:
        # the factory turns on polysemous training, which only serves Hamming-distance
        # filtering (never used here) and took ~40 s of the 47 s a 4,000-vector IVF16,PQ8 took
        ivf.do_polysemous_training = False
    logger.info("training %s on %d of %d vectors", factory, size, n)
    base.train(train)
    return base


_SEARCH_PARAMETER = {"ivf": "nprobe", "hnsw": "efSearch", "quantizer": "quantizer_efSearch"}


def set_search_parameter(index: Any, family: str, value: int) -> None:
    """Set ``nprobe`` (family "ivf"), ``efSearch`` ("hnsw") or the efSearch of an IVF's HNSW coarse
    quantizer ("quantizer") on ``index`` through ``faiss.ParameterSpace``."""
    if family == "flat":
        return
    name = _SEARCH_PARAMETER[family]
    faiss.ParameterSpace().set_index_parameter(index, name, float(value))


def reserve_ivf_lists(index: Any, blocks: Iterable[np.ndarray]) -> np.ndarray | None:
    """Size each list of the trained IVF ``index`` for the (normalised) vectors of ``blocks`` before they
    are added (the same vectors, in the same split); returns their lists (int64, one per vector) for
    `add_preassigned`, or None where nothing was done.

    FAISS grows a list like a ``std::vector``, by doubling and copying, so a streamed build's lists
    held more than their entries (a replay of a 10M build's pattern, 4,096 lists and 8 entries per
    list per add: 1.37x the entries' bytes resident; benchmarks/ivf_list_growth.py). Counting each
    list's vectors first lets every list be allocated once, at its final size. The count is the
    coarse quantizer's assignment, which is most of an add's time with an HNSW quantizer (16.5k
    vectors/s of 128-d against 13.9k/s for the whole add, one core): it is kept (8 bytes a vector) so
    the adds do not compute it again. Lists that are not ``ArrayInvertedLists`` (memory-mapped or
    on-disk ones) or IVF classes whose add cannot take the lists given: None, and ``blocks`` is not read.
    """
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.ArrayInvertedLists) or not isinstance(ivf, _PREASSIGNABLE):
        return None
    counts = np.zeros(ivf.nlist, np.int64)
    assigned = []
    for x in blocks:
        _, lists_of = ivf.quantizer.search(_transformed(index, x), 1)
        assigned.append(lists_of.ravel())
        counts += np.bincount(assigned[-1], minlength=ivf.nlist)
    for list_no in np.flatnonzero(counts).tolist():
        size = lists.list_size(list_no)
        lists.resize(list_no, size + int(counts[list_no]))  # allocates exactly ...
        lists.resize(list_no, size)  # ... and keeps that capacity for the adds
    return np.concatenate(assigned) if assigned else np.zeros(0, np.int64)


_PREASSIGNABLE = (faiss.IndexIVFFlat, faiss.IndexIVFPQ, faiss.IndexIVFScalarQuantizer)
"""IVF classes whose ``add_core`` encodes the vectors it is given into the lists it is given (fast-scan
kinds pack codes in blocks their own add writes)."""


def _transformed(index: Any, x: np.ndarray) -> np.ndarray:
    """``x`` as the IVF inside ``index`` sees it (through an OPQ rotation, for OPQ kinds)."""
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexPreTransform):
        for t in range(outer.chain.size()):
            x = outer.chain.at(t).apply(x)
    return x


def add_preassigned(index: Any, x: np.ndarray, labels: np.ndarray, assigned: np.ndarray) -> None:
    """``index.add_with_ids(x, labels)`` with each vector's list given (`reserve_ivf_lists`'s): the same
    entries in the same order, without a second pass of the coarse quantizer."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    xt = np.ascontiguousarray(_transformed(index, x), np.float32)
    labels = np.ascontiguousarray(labels, np.int64)
    assigned = np.ascontiguousarray(assigned, np.int64)
    if not (xt.shape[0] == labels.size == assigned.size):
        raise ValueError(f"{xt.shape[0]} vectors, {labels.size} labels and {assigned.size} list numbers")
    ivf.add_core(xt.shape[0], faiss.swig_ptr(xt), faiss.swig_ptr(labels), faiss.swig_ptr(assigned))
    index.ntotal = ivf.ntotal


def alias_factory(kind: str, nlist: int | None, hnsw_m: int) -> str | None:
    """The FAISS factory string of ``kind``: an alias ("flat", "ivf", "hnsw") spelt out, a factory string as
    it is (None for "ivf" before ``nlist`` is known)."""
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{hnsw_m},Flat"
    if kind == "ivf":
        return None if nlist is None else f"IVF{nlist},Flat"
    return kind
