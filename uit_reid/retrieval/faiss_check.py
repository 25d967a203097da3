"""Check FAISS index bytes in Python before native code reads them.

A saved `GalleryIndex` may come from someone else. ``faiss.deserialize_index`` trusts the sizes the
bytes declare (a 162-byte file can claim a 4 GiB vector) and HNSW search trusts the neighbour ids
stored in the graph. `check_index_bytes` walks the serialisation of exactly the three index
layouts `GalleryIndex` writes (flat: ``IndexIDMap2(IndexFlatIP)``; hnsw: ``IndexIDMap2(IndexHNSWFlat)``;
ivf: ``IndexIVFFlat`` over ``IndexFlatIP``, inner product) without allocating anything the file
declares, and refuses on the first disagreement: another index type, another dimension or metric,
a declared size larger than the bytes left, counts that do not add up, graph links or entry point
out of range, bytes left over at the end. It returns the FAISS labels (our slots), so the caller can
check them against its id map.
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["FaissBytesError", "check_index_bytes"]

_METRIC_INNER_PRODUCT = 0


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


def _hnsw(r: _Reader, dim: int) -> int:
    r.fourcc(("IHNf",), "hnsw index")
    ntotal = _header(r, dim, "hnsw index")
    r.array("<f8", "hnsw level probabilities")
    cum = r.array("<i4", "hnsw neighbours per level")
    levels = r.array("<i4", "hnsw levels", expected=ntotal)
    offsets = r.array("<u8", "hnsw offsets", expected=ntotal + 1)
    if len(cum) < 1 or (ntotal and (levels.min() < 1 or levels.max() >= len(cum))):
        raise FaissBytesError("hnsw levels are out of range")
    if offsets[0] != 0 or not np.array_equal(np.diff(offsets.astype(np.int64)), cum[levels].astype(np.int64)):
        raise FaissBytesError("hnsw offsets do not match the levels")
    neighbours = r.array("<i4", "hnsw neighbours", expected=int(offsets[-1]))
    if neighbours.size and (neighbours.min() < -1 or neighbours.max() >= ntotal):
        raise FaissBytesError("hnsw neighbour ids point outside the index")
    entry = r.scalar("i", "hnsw entry point")
    max_level = r.scalar("i", "hnsw max level")
    for what in ("hnsw efConstruction", "hnsw efSearch", "hnsw upper beam"):
        r.scalar("i", what)
    top = int(levels.max()) - 1 if ntotal else -1
    if not (-1 <= entry < ntotal) or (ntotal and entry < 0) or max_level != top:
        raise FaissBytesError(f"hnsw entry point {entry} or max level {max_level} out of range")
    if _flat(r, dim, "hnsw storage") != ntotal:
        raise FaissBytesError("hnsw storage size differs from the graph size")
    return ntotal


def _ivf(r: _Reader, dim: int) -> np.ndarray:
    ntotal = _header(r, dim, "ivf index")
    nlist = r.scalar("Q", "ivf nlist")
    r.scalar("Q", "ivf nprobe")
    if not 1 <= nlist <= r.left():
        raise FaissBytesError(f"ivf nlist {nlist} out of range")
    if _flat(r, dim, "ivf quantizer") != nlist:
        raise FaissBytesError(f"ivf quantizer does not hold nlist={nlist} centroids")
    if r.scalar("B", "ivf direct map type") != 0:
        raise FaissBytesError("ivf has a direct map, which GalleryIndex never writes")
    r.array("<i8", "ivf direct map", expected=0)
    r.fourcc(("ilar",), "ivf inverted lists")
    if r.scalar("Q", "ivf list count") != nlist:
        raise FaissBytesError("ivf list count differs from nlist")
    code_size = r.scalar("Q", "ivf code size")
    if code_size != 4 * dim:
        raise FaissBytesError(f"ivf code size {code_size}, expected {4 * dim}")
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


def check_index_bytes(data: bytes | memoryview, kind: str, dim: int) -> np.ndarray:
    """Check that ``data`` is a ``kind`` index of dimension ``dim`` as `GalleryIndex` writes it.

    Returns the FAISS labels stored in it (int64); raises `FaissBytesError` naming what disagrees.
    """
    r = _Reader(data)
    if kind == "ivf":
        r.fourcc(("IwFl",), "index type")
        labels = _ivf(r, dim)
    elif kind in ("flat", "hnsw"):
        r.fourcc(("IxM2",), "index type")
        ntotal = _header(r, dim, "id map")
        inner = _flat(r, dim, "flat index") if kind == "flat" else _hnsw(r, dim)
        if inner != ntotal:
            raise FaissBytesError(f"id map holds {ntotal} vectors, the inner index {inner}")
        labels = r.array("<i8", "id map labels", expected=ntotal)
    else:
        raise FaissBytesError(f"unknown index kind {kind!r}")
    if r.left():
        raise FaissBytesError(f"{r.left()} unexpected bytes after the index")
    return labels.astype(np.int64)
