"""Check FAISS index bytes in Python before native code reads them.

A saved `GalleryIndex` may come from someone else. ``faiss.deserialize_index`` trusts the sizes the
bytes declare (a 162-byte file can claim a 4 GiB vector) and HNSW search trusts the neighbour ids
stored in the graph. `check_index_bytes` walks the serialisation of exactly the index layouts
`GalleryIndex` writes for the factory strings `uit_reid.retrieval.factory_string.parse_factory` accepts
(``Flat`` and ``HNSWm,Flat`` as ``IndexIDMap2`` over the inner index; IVF kinds as ``IndexIVFFlat``,
``IndexIVFPQ`` or ``IndexIVFPQFastScan`` over an ``IndexFlatIP`` or ``IndexHNSWFlat`` coarse quantizer,
behind an ``IndexPreTransform`` holding one OPQ matrix for OPQ kinds; inner product throughout)
without allocating anything the file declares, and refuses on the first disagreement: another index
type, another dimension or metric, a declared size larger than the bytes left, counts that do not add
up, graph links or entry point out of range, bytes left over at the end. It returns the FAISS labels
(our slots), so the caller can check them against its id map."""

from __future__ import annotations

import struct

import numpy as np

from uit_reid.retrieval.factory_string import Layout

__all__ = ["FaissBytesError", "check_index_bytes"]

_METRIC_INNER_PRODUCT = 0
_FAST_SCAN_BLOCK = 32  # vectors per SIMD block of fast-scan PQ lists (FAISS's bbs)
_NO_CODE_SIZE = (1 << 64) - 1  # BlockInvertedLists.code_size: codes only make sense as whole blocks


class FaissBytesError(ValueError):
    """The bytes are not an index of the kind and dimension expected (the reason is named)."""


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.left():
            raise FaissBytesError(f"{what} declares {n} bytes at offset {self.pos}, but only {self.left()} remain")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        return struct.unpack("<" + fmt, self.take(size, what))[0]

    def fourcc(self, expected: tuple[str, ...], what: str) -> str:
        raw = bytes(self.take(4, what))
        tag = raw.decode("latin-1")
        if tag not in expected:
            raise FaissBytesError(f"{what} is {raw!r}, expected one of {expected}")
        return tag

    def array(self, dtype: str, what: str, expected: int | None = None) -> np.ndarray:
        """A faiss vector: uint64 count then that many items; the count is checked before reading."""
        count = self.scalar("Q", f"{what} length")
        if expected is not None and count != expected:
            raise FaissBytesError(f"{what} has {count} entries, expected {expected}")
        item = np.dtype(dtype).itemsize
        if count > self.left() // item:
            raise FaissBytesError(
                f"{what} declares {count} entries ({count * item} bytes), but only {self.left()} bytes remain"
            )
        return np.frombuffer(self.take(count * item, what), dtype=dtype)


def _header(r: _Reader, dim: int, what: str) -> int:
    d = r.scalar("i", f"{what} dimension")
    ntotal = r.scalar("q", f"{what} size")
    r.scalar("q", f"{what} header")
    r.scalar("q", f"{what} header")
    r.scalar("B", f"{what} trained flag")
    metric = r.scalar("i", f"{what} metric")
    if d != dim:
        raise FaissBytesError(f"{what} has dimension {d}, expected {dim}")
    if ntotal < 0:
        raise FaissBytesError(f"{what} declares a negative size {ntotal}")
    if metric != _METRIC_INNER_PRODUCT:
        raise FaissBytesError(f"{what} uses metric {metric}, expected inner product (0)")
    return ntotal


def _flat(r: _Reader, dim: int, what: str) -> int:
    r.fourcc(("IxFI",), what)
    ntotal = _header(r, dim, what)
    if ntotal > r.left() // (4 * dim):
        raise FaissBytesError(f"{what} declares {ntotal} vectors of dimension {dim}, more than the file holds")
    r.array("<f4", f"{what} vectors", expected=ntotal * dim)
    return ntotal


def _hnsw(r: _Reader, dim: int, what: str = "hnsw") -> int:
    """An ``IndexHNSWFlat`` (the graph of kind "hnsw", or an IVF's coarse quantizer): its size."""
    r.fourcc(("IHNf",), f"{what} index")
    ntotal = _header(r, dim, f"{what} index")
    r.array("<f8", f"{what} level probabilities")
    cum = r.array("<i4", f"{what} neighbours per level")
    levels = r.array("<i4", f"{what} levels", expected=ntotal)
    offsets = r.array("<u8", f"{what} offsets", expected=ntotal + 1)
    if len(cum) < 1 or (ntotal and (levels.min() < 1 or levels.max() >= len(cum))):
        raise FaissBytesError(f"{what} levels are out of range")
    if offsets[0] != 0 or not np.array_equal(np.diff(offsets.astype(np.int64)), cum[levels].astype(np.int64)):
        raise FaissBytesError(f"{what} offsets do not match the levels")
    neighbours = r.array("<i4", f"{what} neighbours", expected=int(offsets[-1]))
    if neighbours.size and (neighbours.min() < -1 or neighbours.max() >= ntotal):
        raise FaissBytesError(f"{what} neighbour ids point outside the index")
    entry = r.scalar("i", f"{what} entry point")
    max_level = r.scalar("i", f"{what} max level")
    for name in ("efConstruction", "efSearch", "upper beam"):
        r.scalar("i", f"{what} {name}")
    top = int(levels.max()) - 1 if ntotal else -1
    if not (-1 <= entry < ntotal) or (ntotal and entry < 0) or max_level != top:
        raise FaissBytesError(f"{what} entry point {entry} or max level {max_level} out of range")
    if _flat(r, dim, f"{what} storage") != ntotal:
        raise FaissBytesError(f"{what} storage size differs from the graph size")
    return ntotal


def _ivf(r: _Reader, dim: int, layout: Layout) -> np.ndarray:
    what = "ivf index"
    r.fourcc(("IwPf",) if layout.fast_scan else ("IwPQ",) if layout.pq_m else ("IwFl",), "index type")
    ntotal = _header(r, dim, what)
    nlist = r.scalar("Q", "ivf nlist")
    r.scalar("Q", "ivf nprobe")
    if nlist != layout.nlist or not 1 <= nlist <= r.left():
        raise FaissBytesError(f"ivf nlist {nlist} out of range or not the {layout.nlist} the header names")
    if layout.quantizer_hnsw_m:
        centroids = _hnsw(r, dim, "ivf hnsw quantizer")
    else:
        centroids = _flat(r, dim, "ivf quantizer")
    if centroids != nlist:
        raise FaissBytesError(f"ivf quantizer does not hold nlist={nlist} centroids")
    if r.scalar("B", "ivf direct map type") != 0:
        raise FaissBytesError("ivf has a direct map, which GalleryIndex never writes")
    r.array("<i8", "ivf direct map", expected=0)
    expected_code = 4 * dim
    if layout.pq_m:
        expected_code = _pq(r, dim, layout)
    if layout.fast_scan:
        return _block_lists(r, nlist, ntotal, expected_code)
    r.fourcc(("ilar",), "ivf inverted lists")
    if r.scalar("Q", "ivf list count") != nlist:
        raise FaissBytesError("ivf list count differs from nlist")
    code_size = r.scalar("Q", "ivf code size")
    if code_size != expected_code:
        raise FaissBytesError(f"ivf code size {code_size}, expected {expected_code}")
    if r.fourcc(("full", "sprs"), "ivf list layout") == "full":
        sizes = r.array("<u8", "ivf list sizes", expected=nlist).astype(np.int64)
    else:
        pairs = r.array("<u8", "ivf sparse list sizes").astype(np.int64)
        if pairs.size % 2 or (pairs.size and pairs[0::2].max() >= nlist):
            raise FaissBytesError("ivf sparse list sizes are malformed")
        sizes = np.zeros(nlist, np.int64)
        sizes[pairs[0::2]] = pairs[1::2]
    if (sizes < 0).any() or int(sizes.sum()) != ntotal:
        raise FaissBytesError(f"ivf lists hold {int(sizes.sum())} vectors, the header says {ntotal}")
    labels = []
    for n in sizes[sizes > 0].tolist():
        r.take(n * code_size, "ivf list codes")
        labels.append(np.frombuffer(r.take(n * 8, "ivf list ids"), dtype="<i8"))
    return np.concatenate(labels) if labels else np.zeros(0, np.int64)


def _pq(r: _Reader, dim: int, layout: Layout) -> int:
    """The PQ fields of an ``IndexIVFPQ`` (``IndexIVFPQFastScan``: and its SIMD block sizes); the code size."""
    if r.scalar("B", "ivfpq by_residual") not in (0, 1):
        raise FaissBytesError("ivfpq by_residual flag is not 0 or 1")
    code_size = layout.code_size
    if r.scalar("Q", "ivfpq code size") != code_size:
        raise FaissBytesError(f"ivfpq code size differs from {code_size}")
    if layout.fast_scan:
        bbs, m2 = r.scalar("i", "fast-scan block size"), r.scalar("Q", "fast-scan padded M")
        r.scalar("i", "fast-scan implementation")
        r.scalar("Q", "fast-scan query block")
        if bbs != _FAST_SCAN_BLOCK or m2 != layout.pq_m + layout.pq_m % 2:
            raise FaissBytesError(f"fast-scan block size {bbs} or padded M {m2} is not what PQ{layout.pq_m}x4fs writes")
    pq = (r.scalar("Q", "pq dimension"), r.scalar("Q", "pq M"), r.scalar("Q", "pq bits"))
    if pq != (dim, layout.pq_m, layout.pq_bits):
        raise FaissBytesError(f"pq (d, M, bits) = {pq}, expected {(dim, layout.pq_m, layout.pq_bits)}")
    r.array("<f4", "pq centroids", expected=dim * (1 << layout.pq_bits))
    return code_size


def _block_lists(r: _Reader, nlist: int, ntotal: int, code_size: int) -> np.ndarray:
    """Fast-scan ``BlockInvertedLists``: per list its ids and its codes packed in blocks of 32 vectors."""
    r.fourcc(("ilbl",), "ivf inverted lists")
    header = [r.scalar("Q", f"block lists {name}") for name in ("count", "code size", "block length", "block bytes")]
    if header != [nlist, _NO_CODE_SIZE, _FAST_SCAN_BLOCK, _FAST_SCAN_BLOCK * code_size]:
        raise FaissBytesError(f"fast-scan lists (count, code size, block length, block bytes) = {header} do not fit")
    labels, total = [], 0
    for _ in range(nlist):
        ids = r.array("<i8", "ivf list ids")
        blocks = -(-ids.size // _FAST_SCAN_BLOCK)
        r.array("<u1", "ivf list codes", expected=blocks * header[3])
        labels.append(ids)
        total += ids.size
    if total != ntotal:
        raise FaissBytesError(f"ivf lists hold {total} vectors, the header says {ntotal}")
    return np.concatenate(labels) if labels else np.zeros(0, np.int64)


def _opq(r: _Reader, dim: int, out: int) -> None:
    """An ``IndexPreTransform`` header and its one OPQ rotation (an ``out`` x ``dim`` linear map, no bias)."""
    r.fourcc(("IxPT",), "index type")
    _header(r, dim, "opq wrapper")
    if r.scalar("i", "opq chain length") != 1:
        raise FaissBytesError("opq wrapper holds other than one transform")
    r.fourcc(("LTra",), "opq transform")
    if r.scalar("B", "opq bias flag") != 0:
        raise FaissBytesError("opq transform has a bias, which OPQ never writes")
    r.array("<f4", "opq matrix", expected=out * dim)
    r.array("<f4", "opq bias", expected=0)
    if (r.scalar("i", "opq input dimension"), r.scalar("i", "opq output dimension")) != (dim, out):
        raise FaissBytesError(f"opq transform is not {dim} -> {out}")
    r.scalar("B", "opq trained flag")


def check_index_bytes(data: bytes | memoryview, layout: Layout, dim: int) -> np.ndarray:
    """Check that ``data`` is an index of ``layout`` (see `parse_factory`) and dimension ``dim``.

    Returns the FAISS labels stored in it (int64); raises `FaissBytesError` naming what disagrees.
    """
    r = _Reader(data)
    if layout.kind == "ivf":
        if layout.opq_m:
            _opq(r, dim, layout.ivf_dim(dim))
        labels = _ivf(r, layout.ivf_dim(dim), layout)
    elif layout.kind in ("flat", "hnsw"):
        r.fourcc(("IxM2",), "index type")
        ntotal = _header(r, dim, "id map")
        inner = _flat(r, dim, "flat index") if layout.kind == "flat" else _hnsw(r, dim)
        if inner != ntotal:
            raise FaissBytesError(f"id map holds {ntotal} vectors, the inner index {inner}")
        labels = r.array("<i8", "id map labels", expected=ntotal)
    else:
        raise FaissBytesError(f"unknown index kind {layout.kind!r}")
    if r.left():
        raise FaissBytesError(f"{r.left()} unexpected bytes after the index")
    return labels.astype(np.int64)
