"""The FAISS factory strings a `GalleryIndex` accepts, checked before anything is built.

One grammar, the one autofaiss and LAION-5B's index use (``OPQ24_168,IVF131072_HNSW32,PQ24x8``)::

    Flat
    HNSW<m>,Flat
    [OPQ<m>[_<d>],]IVF<n>[_HNSW<m>],Flat | PQ<m>[x<bits>] | PQ<m>x4fs

``OPQ<m>_<d>`` rotates (and reduces) the vectors to ``d`` dimensions before the IVF; ``IVF<n>_HNSW<m>``
finds the nearest of the ``n`` lists through an HNSW graph over the centroids instead of comparing
with all ``n`` of them; ``PQ<m>x4fs`` is FAISS's fast-scan PQ (4-bit codes searched in SIMD registers).
Everything works with inner product, the metric the project uses (vectors are L2-normalised).

`parse_factory` returns the `Layout` (the sizes) or raises ValueError in one line naming the string
and what is wrong with it, so FAISS never sees a string it would reject with a C++ error or one that
would exhaust memory (``HNSW100000000``, a 20-digit list count). Refused on purpose: ``RFlat`` (a
refine stage keeps every full vector in RAM and cannot add with ids or remove; ``search(rerank=...)``
re-ranks from the embedding shards on disk instead) and PQ codes above `MAX_PQ_BITS` bits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_HNSW_M", "MAX_NLIST", "MAX_PQ_BITS", "Layout", "parse_factory", "shorten"]

MAX_NLIST = 1 << 20
"""Most IVF lists: 2**20 lists already suit 10**10+ vectors (LAION-5B used 2**17); the flat centroid table
alone is 3 GB at 768-d and training needs ~39 vectors per list."""
MAX_HNSW_M = 256
"""Most HNSW neighbours per node (graph or coarse quantizer): FAISS's own uses are 4..64; each node
keeps 2m int32 links at level 0, so m=256 already costs 2 KB of links per vector."""
MAX_PQ_BITS = 12
"""Most bits per PQ sub-code: 2**bits centroids per sub-quantizer, each trained on ~39 x 2**bits vectors
and scanned once per query, so 16-bit codes (65,536 centroids) need 2.5 M training vectors."""

_NUMBER = r"([0-9]+)"
_FACTORY = re.compile(
    rf"(?:OPQ{_NUMBER}(?:_{_NUMBER})?,)?IVF{_NUMBER}(?:_HNSW{_NUMBER})?,"
    rf"(?:Flat|PQ{_NUMBER}(?:x{_NUMBER}(fs)?)?)"
)
_SUPPORTED = (
    "Flat, HNSW<m>,Flat or [OPQ<m>[_<d>],]IVF<n>[_HNSW<m>],{Flat | PQ<m>[x<bits>] | PQ<m>x4fs}"
)


@dataclass(frozen=True)
class Layout:
    """The structure a factory string builds: ``kind`` is "flat", "hnsw" or "ivf"; the rest its sizes."""

    kind: str
    nlist: int = 0
    hnsw_m: int = 0  # neighbours per node of the HNSW graph (kind "hnsw")
    pq_m: int = 0  # 0: IVF stores full float32 vectors (IVFn,Flat)
    pq_bits: int = 8
    opq_m: int = 0  # 0: no OPQ rotation in front
    opq_dim: int = 0  # dimension OPQ maps to (0: no OPQ); the IVF's dimension when set
    quantizer_hnsw_m: int = 0  # 0: flat coarse quantizer; else IVF<n>_HNSW<m>
    fast_scan: bool = False  # PQ<m>x4fs

    @property
    def code_size(self) -> int:
        """Bytes per vector in the inverted lists (given the dimension for Flat: see `check_index_bytes`)."""
        return -(-self.pq_m * self.pq_bits // 8)

    def ivf_dim(self, dim: int) -> int:
        """Dimension of the vectors the IVF stores: OPQ's output, else the input ``dim``."""
        return self.opq_dim or dim


def shorten(factory: str) -> str:
    """``repr(factory)``, cut to 60 characters so an absurd string still gives a readable one-line error."""
    return repr(factory) if len(factory) <= 60 else f"{factory[:50]!r}... ({len(factory)} characters)"


def _count(factory: str, text: str, what: str, low: int, high: int) -> int:
    """``text`` as an int in ``low..high`` (read only when short enough to be in range)."""
    value = int(text) if len(text.lstrip("0")) <= len(str(high)) else high + 1
    if not low <= value <= high:
        shown = text if len(text) <= 12 else f"{text[:9]}... ({len(text)} digits)"
        raise ValueError(f"index kind {shorten(factory)}: {what} {shown} is out of range {low}..{high}")
    return value


def parse_factory(factory: str, dim: int) -> Layout:
    """The `Layout` of a supported FAISS factory string for ``dim``-dimensional vectors.

    ValueError, one line naming the string and its fault: not of the grammar (module docstring), a
    size out of range, or sizes that do not fit ``dim`` (PQ<m> must divide the dimension it codes).
    """
    if not isinstance(factory, str):
        raise ValueError(f"index kind must be a string, got {factory!r}")
    if factory == "Flat":
        return Layout("flat")
    hnsw = re.fullmatch(rf"HNSW{_NUMBER},Flat", factory)
    if hnsw is not None:
        return Layout("hnsw", hnsw_m=_count(factory, hnsw.group(1), "HNSW neighbours", 2, MAX_HNSW_M))
    match = _FACTORY.fullmatch(factory)
    if match is None:
        hint = ""
        if "RFlat" in factory or "Refine" in factory:
            hint = " (RFlat is refused: re-rank from the embedding shards with search(rerank=...) / --rerank)"
        raise ValueError(f"unsupported index kind {shorten(factory)}: use flat, ivf, hnsw or {_SUPPORTED}{hint}")
    opq, opq_dim, nlist, q_hnsw, pq, bits, fs = match.groups()
    layout = Layout(
        "ivf",
        nlist=_count(factory, nlist, "IVF list count", 1, MAX_NLIST),
        quantizer_hnsw_m=0 if q_hnsw is None else _count(factory, q_hnsw, "HNSW neighbours", 2, MAX_HNSW_M),
        pq_m=0 if pq is None else _count(factory, pq, "PQ sub-quantizers", 1, dim),
        pq_bits=8 if bits is None else _count(factory, bits, "PQ bits", 1, MAX_PQ_BITS),
        opq_m=0 if opq is None else _count(factory, opq, "OPQ sub-quantizers", 1, dim),
        opq_dim=0 if opq is None else (dim if opq_dim is None else _count(factory, opq_dim, "OPQ output dimension", 1, dim)),
        fast_scan=fs is not None,
    )
    if layout.fast_scan and layout.pq_bits != 4:
        raise ValueError(f"index kind {shorten(factory)}: fast-scan PQ codes are 4 bits (PQ<m>x4fs)")
    ivf_dim = layout.ivf_dim(dim)
    if layout.opq_m and ivf_dim % layout.opq_m:
        raise ValueError(f"index kind {shorten(factory)}: OPQ{layout.opq_m} must divide its output dimension {ivf_dim}")
    if layout.opq_m and layout.opq_m != layout.pq_m:
        raise ValueError(f"index kind {shorten(factory)}: OPQ<m> must equal PQ<m> (the rotation is trained for that PQ)")
    if layout.pq_m and ivf_dim % layout.pq_m:
        raise ValueError(f"index kind {shorten(factory)}: PQ{layout.pq_m} must divide the dimension {ivf_dim}")
    return layout
