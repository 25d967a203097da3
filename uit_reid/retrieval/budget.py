"""Pick an index kind under a memory budget, the way autofaiss does, as small named functions.

autofaiss itself is not a dependency: version 2.18.0 (checked) requires ``numpy<2`` and
``faiss-cpu``, while this library runs on numpy 2 and may be used with faiss-gpu, and its defaults
(up to 2**16 IVF lists, 4-bit fast-scan PQ) do not suit a small CPU. The rules here are the same in
spirit: exact search while it fits, otherwise IVF with `budget_nlist` lists (autofaiss's ``4 * sqrt(n)``
to ``16 * sqrt(n)``, fewer when the k-means training sample would crowd the budget), with full vectors if they fit and product-quantised codes as large
as the budget allows if not, an OPQ rotation in front of strong compression, and an HNSW coarse
quantizer once the list count is large (`coarse_quantizer`). `index_memory` is the arithmetic the
docs' table uses; `parse_bytes` reads this project's sizes (``4GB``, ``512MiB``) and autofaiss's
(``16G``, ``300M``: binary units).
"""

from __future__ import annotations

import math
import re

from uit_reid.retrieval.factory_string import parse_factory

__all__ = ["FLAT_LIMIT", "HNSW_QUANTIZER_LISTS", "MAX_BYTES", "PART_MEMORY", "TRAIN_SAMPLE_SHARE", "budget_nlist",
           "choose_kind", "coarse_quantizer", "index_memory", "parse_bytes", "part_vectors"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
          "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}  # autofaiss's spelling: 16G is 16 x 2**30
MAX_BYTES = 2**60
"""Largest size `parse_bytes` reads (1 EiB): anything larger is a typo, not a machine."""
HNSW_QUANTIZER_LISTS = 16384
"""List count from which `coarse_quantizer` picks an HNSW graph over the centroids (see there)."""
_QUANTIZER_HNSW_M = 32  # autofaiss's and LAION-5B's IVF<n>_HNSW32
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_ID_BYTES = 8  # FAISS stores one int64 label per vector
_ID_MAP_BYTES = 9  # our id map: a live byte and an int64 (string ids cost their length instead)
FLAT_LIMIT = 1_000_000
"""Largest gallery `choose_kind` searches exactly: above it exact search costs seconds per query batch."""
TRAIN_SAMPLE_SHARE = 8
"""`budget_nlist` keeps the k-means training sample (40 float32 vectors per list) within 1/8 of the
budget: the build holds it beside the index being filled, a shard and FAISS's buffers (the 10M x 512
``IVF4096,PQ256`` build peaked at 3.88 GB for a 2.9 GB index and a 0.34 GB sample)."""
_TRAIN_POINTS_PER_LIST = 40  # the sample FAISS asks for (it warns below 39 points per centroid)
PART_MEMORY = 2**30
"""What a rank of an on-disk build lets the part it fills take (1 GiB) before writing it to disk and
starting the next (`part_vectors`)."""
_ADD_BYTES_PER_VECTOR = 96
"""A part's memory per vector beyond `index_memory`'s while it is filled and written: its list
number (8), its id's 64-bit key and the sort that proves the keys distinct (16+), the key table the
part's id file is written from (16 + its sort) and a string id's offset and text. Measured: the
50M x 128-d ``IVF4096_HNSW32,PQ32`` build's ranks grew 130 bytes per vector held, 49 of them
`index_memory`'s (docs/benchmarks.md#on-disk-50m)."""


def parse_bytes(text: str) -> int:
    """``"4GB"``, ``"512MiB"``, ``"1e9"``-free plain sizes: a byte count, or ValueError naming the text."""
    match = _SIZE.fullmatch(str(text))
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        shown = repr(text) if len(str(text)) <= 40 else f"{str(text)[:30]!r}... ({len(str(text))} characters)"
        raise ValueError(f"cannot read {shown} as a size: use a number with B, KB, MB, GB, TB, KiB, MiB, GiB, TiB "
                         "or autofaiss's K, M, G, T")
    whole = match.group(1).split(".")[0].lstrip("0")
    if len(whole) > len(str(MAX_BYTES)) or float(match.group(1)) * _UNITS[unit] > MAX_BYTES:
        raise ValueError(f"size {whole[:12]}{'...' if len(whole) > 12 else ''}{unit} is absurd: more than 2**60 bytes")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise ValueError(f"size {text!r} must be positive")
    return value


def coarse_quantizer(nlist: int) -> str:
    """The coarse quantizer of an IVF with ``nlist`` lists, as its factory-string suffix.

    ``""`` (flat: every add and every query compares with all ``nlist`` centroids) below
    `HNSW_QUANTIZER_LISTS` lists, ``"_HNSW32"`` from there on. At 10**5 lists a flat quantizer costs
    10**5 distance computations per vector added and per query (5 x 10**7 multiply-adds at 512-d,
    more than scanning the probed lists), while an HNSW graph over the centroids finds the nearest
    lists in a few hundred; its price, ~300 bytes of links per list, is small beside the centroids
    themselves. This is what autofaiss and LAION-5B use (``IVF131072_HNSW32``).
    """
    if nlist < 1:
        raise ValueError(f"nlist must be positive, got {nlist}")
    return f"_HNSW{_QUANTIZER_HNSW_M}" if nlist >= HNSW_QUANTIZER_LISTS else ""


def budget_nlist(n: int, dim: int, budget: int) -> int:
    """The IVF list count `choose_kind` gives ``n`` vectors of ``dim`` under ``budget`` bytes.

    The smallest power of two from ``4 * sqrt(n)`` (so below ``8 * sqrt(n)``, inside autofaiss's
    ``4 * sqrt(n)``..``16 * sqrt(n)``; LAION-5B's 5.5 x 10**9 vectors used 131,072), halved while the
    gallery cannot give 40 training points per list (``n // 40``) or the training sample exceeds
    ``budget / TRAIN_SAMPLE_SHARE``. More lists make each probe scan fewer codes, so the list count
    grows with the gallery; from `HNSW_QUANTIZER_LISTS` on, `coarse_quantizer` keeps assignment cheap.
    10**7 x 512 under 4 GB: 4,096 lists; 10**8 x 128 under 16 GB: 65,536 (``IVF65536_HNSW32``).
    """
    if n < 1 or dim < 1 or budget < 1:
        raise ValueError(f"n, dim and budget must be positive, got {n}, {dim}, {budget}")
    nlist = 1 << math.ceil(math.log2(4 * math.sqrt(n)))
    while nlist > 1 and (nlist * _TRAIN_POINTS_PER_LIST > n
                         or nlist * _TRAIN_POINTS_PER_LIST * dim * 4 * TRAIN_SAMPLE_SHARE > budget):
        nlist //= 2
    return nlist


def index_memory(factory: str, n: int, dim: int) -> int:
    """Bytes a `GalleryIndex` of ``n`` vectors of ``dim`` takes in memory (FAISS structures + id map)."""
    layout = parse_factory(factory, dim)
    ids = n * (_ID_BYTES + _ID_MAP_BYTES)
    if layout.kind == "flat":
        return n * dim * 4 + ids
    if layout.kind == "hnsw":
        links = n * layout.hnsw_m * 2 * 4 * 1.1  # level 0 has 2m links; upper levels add ~10%
        return int(n * dim * 4 + links + n * 12 + ids)
    ivf_dim = layout.ivf_dim(dim)
    code = ivf_dim * 4 if not layout.pq_m else layout.code_size
    tables = layout.nlist * ivf_dim * 4
    if layout.quantizer_hnsw_m:
        tables += layout.nlist * (layout.quantizer_hnsw_m * 2 * 4 * 1.1 + 12)
    if layout.pq_m:
        tables += ivf_dim * (1 << layout.pq_bits) * 4
    if layout.fast_scan:  # codes are stored in blocks of 32: up to 31 slots of padding per list
        tables += layout.nlist * 31 * code
    if layout.opq_m:
        tables += dim * ivf_dim * 4
    return int(n * code + ids + tables)


def part_vectors(factory: str, dim: int, budget: int = PART_MEMORY) -> int:
    """Vectors a rank of an on-disk build adds into one in-memory part before writing it to disk.

    A rank's memory then stays near ``budget`` however many vectors it is given: the part's
    `index_memory` plus `_ADD_BYTES_PER_VECTOR` per vector (at least one vector). 128-d
    ``IVF4096_HNSW32,PQ32`` under 1 GiB: 7.4 million.
    """
    if dim < 1 or budget < 1:
        raise ValueError(f"dim and budget must be positive, got {dim}, {budget}")
    fixed = index_memory(factory, 0, dim)
    per_vector = index_memory(factory, 1, dim) - fixed + _ADD_BYTES_PER_VECTOR
    return max(1, (budget - fixed) // per_vector)


def choose_kind(n: int, dim: int, budget: int, max_nlist: int | None = None) -> str:
    """The most accurate supported factory string whose `index_memory` fits ``budget`` bytes.

    Exact (``Flat``) up to `FLAT_LIMIT` vectors; then ``IVF<nlist>,Flat``; then ``IVF<nlist>,PQ<m>``
    with the largest ``m`` (a divisor of ``dim``, one byte per sub-vector) that fits, with ``OPQ<m>``
    in front when ``m <= dim / 8``. The list count is `budget_nlist`'s, at most ``max_nlist`` if
    given (IVF training time grows with it); the coarse quantizer is the one `coarse_quantizer`
    picks for it. ValueError when even 8-byte codes do not fit.
    """
    if n < 1 or dim < 1 or budget < 1:
        raise ValueError(f"n, dim and budget must be positive, got {n}, {dim}, {budget}")
    if n <= FLAT_LIMIT and index_memory("Flat", n, dim) <= budget:
        return "Flat"
    nlist = budget_nlist(n, dim, budget)
    if max_nlist is not None:
        nlist = min(nlist, max(1, max_nlist))
    ivf = f"IVF{nlist}{coarse_quantizer(nlist)}"
    factory = f"{ivf},Flat"
    if index_memory(factory, n, dim) <= budget:
        return factory
    for m in sorted((m for m in range(8, dim + 1) if dim % m == 0 and m <= 256), reverse=True):
        factory = f"{ivf},PQ{m}"
        if m * 8 <= dim:
            factory = f"OPQ{m},{factory}"
        if index_memory(factory, n, dim) <= budget:
            return factory
    raise ValueError(
        f"{n} vectors of dimension {dim} do not fit in {budget} bytes even as 8-byte PQ codes "
        f"(need {index_memory(f'{ivf},PQ8', n, dim)} bytes)"
    )
