"""The factory-string grammar used at scale (OPQ<m>_<d>, IVF<n>_HNSW<m>, PQ<m>x<bits>, PQ<m>x4fs) on real FAISS."""

from __future__ import annotations

import struct

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.retrieval import GalleryIndex, IndexFormatError
from uit_reid.retrieval.factory_string import MAX_HNSW_M, MAX_NLIST, MAX_PQ_BITS, Layout, parse_factory

DIM = 32
N = 3000
SCALE_KINDS = [
    "IVF16_HNSW8,Flat",
    "IVF16_HNSW8,PQ8",
    "OPQ8_16,IVF16,PQ8x4",
    "IVF16,PQ8x4fs",
    "IVF16,PQ8x6",
    "OPQ8_16,IVF16_HNSW8,PQ8x4fs",
]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, DIM))
    xb = (centers[rng.integers(0, 40, N)] + 0.3 * rng.standard_normal((N, DIM))).astype(np.float32)
    xq = (xb[:40] + 0.05 * rng.standard_normal((40, DIM))).astype(np.float32)
    exact = np.argsort(-(unit(xq) @ unit(xb).T), axis=1, kind="stable")[:, :10]
    return xb, xq, exact


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found.tolist(), exact.tolist())]))


@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_scale_kinds_build_search_save_and_remove(kind, data, tmp_path) -> None:
    """Each kind builds with inner product, finds the exact neighbours (re-ranked), round-trips and removes."""
    xb, xq, exact = data
    index = GalleryIndex(DIM, kind)
    index.add(xb, np.arange(N))
    inner = faiss.extract_index_ivf(index._index)
    assert inner.metric_type == faiss.METRIC_INNER_PRODUCT == inner.quantizer.metric_type
    index.nprobe = 16  # every list: what is left is the codes' own error
    _, found = index.search(xq, 10)
    floor = 0.99 if kind.endswith("Flat") else 0.12  # 8 or 6 bits per 4 dims vs a random pick's 10/3000
    assert recall(found, exact) >= floor
    exact_scores, reranked = index.search(xq, 10, rerank=lambda slots: xb[slots], candidates=300)
    assert recall(reranked, exact) >= 0.95
    np.testing.assert_allclose(exact_scores, np.sum(unit(xq)[:, None] * unit(xb)[reranked], axis=-1), atol=1e-5)
    path = tmp_path / "g.faiss"
    index.save(path)
    for mmap in (False, True):
        loaded = GalleryIndex.load(path, mmap=mmap)
        assert (loaded.kind, loaded.nprobe, loaded.ef_search) == (index.kind, 16, index.ef_search)
        assert np.array_equal(loaded.search(xq, 10)[1], found)
    assert index.remove([int(found[0, 0]), int(found[1, 0])]) == 2
    assert not np.isin(index.search(xq, 10)[1], found[:2, 0]).any()


def test_hnsw_quantizer_search_beam_follows_ef_search_and_nprobe(data, tmp_path) -> None:
    xb, _, _ = data
    index = GalleryIndex(DIM, "IVF16_HNSW8,PQ8", ef_search=20)
    index.add(xb[:1000], np.arange(1000))

    def beam(i: GalleryIndex) -> int:
        return faiss.downcast_index(faiss.extract_index_ivf(i._index).quantizer).hnsw.efSearch

    assert (index.ef_search, beam(index)) == (20, 20)
    index.ef_search = 12
    index.nprobe = 16  # the graph must return 16 lists: its beam is at least that
    assert beam(index) == 16
    index.nprobe = 4
    assert beam(index) == 12
    index.save(tmp_path / "g.faiss")
    assert beam(GalleryIndex.load(tmp_path / "g.faiss")) == 12
    with pytest.raises(ValueError, match="ef_search applies to kind='hnsw' and IVF<n>_HNSW<m> kinds"):
        GalleryIndex(DIM, "IVF16,PQ8").ef_search = 5


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("IVF4,PQ8x16", "index kind 'IVF4,PQ8x16': PQ bits 16 is out of range 1..12"),
        ("IVF" + "9" * 20 + ",Flat",
         r"index kind 'IVF99999999999999999999,Flat': IVF list count 999999999\.\.\. \(20 digits\) is out of range"),
        ("IVF" + "7" * 400 + ",Flat", r"index kind 'IVF7{47}'\.\.\. \(408 characters\): IVF list count 777777777\.\.\."),
        ("HNSW100000000", "unsupported index kind 'HNSW100000000'"),
        ("HNSW200000,Flat", "index kind 'HNSW200000,Flat': HNSW neighbours 200000 is out of range 2..256"),
        ("IVF16_HNSW1,PQ8", "HNSW neighbours 1 is out of range 2..256"),
        ("IVF0,Flat", "IVF list count 0 is out of range 1..1048576"),
        ("IVF16,PQ8x4fs,RFlat", "unsupported index kind 'IVF16,PQ8x4fs,RFlat'.*RFlat is refused: re-rank"),
        ("IVF16,PQ8x8fs", "index kind 'IVF16,PQ8x8fs': fast-scan PQ codes are 4 bits"),
        ("OPQ8_64,IVF16,PQ8", "OPQ output dimension 64 is out of range 1..32"),
        ("OPQ8_12,IVF16,PQ8", "OPQ8 must divide its output dimension 12"),
        ("OPQ4_16,IVF16,PQ8", "OPQ<m> must equal PQ<m>"),
        ("OPQ8_16,IVF16,Flat", "OPQ<m> must equal PQ<m>"),
        ("OPQ16_24,IVF16,PQ16", "OPQ16 must divide its output dimension 24"),
        ("IVF16,PQ7", "PQ7 must divide the dimension 32"),
        ("IVF16,PQ64", "PQ sub-quantizers 64 is out of range 1..32"),
        ("IVF16_HNSW8,PQ8x4fsr", "unsupported index kind"),
        (" IVF16,Flat", "unsupported index kind"),
    ],
)
def test_bad_kinds_refused_by_name_before_building(kind, message) -> None:
    with pytest.raises(ValueError, match=message) as err:
        GalleryIndex(DIM, kind)
    assert "\n" not in str(err.value) and "Error in" not in str(err.value)


def test_a_sample_too_small_for_the_pq_codebook_is_one_line(data) -> None:
    xb, _, _ = data
    index = GalleryIndex(DIM, "IVF4,PQ8x12")
    with pytest.raises(ValueError, match=r"IVF4,PQ8x12 needs at least 4096 training vectors \(nlist=4, 2\*\*12 PQ"):
        index.add(xb[:1000], np.arange(1000))


@given(st.text(alphabet="OPQIVFHNSWFlatx_,fs0123456789", max_size=40))
@settings(max_examples=300, deadline=None)
def test_any_string_is_a_layout_or_one_value_error(text) -> None:
    """No string gets past the grammar into FAISS unchecked, and no other exception escapes."""
    try:
        layout = parse_factory(text, DIM)
    except ValueError as err:
        assert "\n" not in str(err)
        return
    assert layout.kind in ("flat", "hnsw", "ivf")
    assert layout.nlist <= MAX_NLIST and max(layout.hnsw_m, layout.quantizer_hnsw_m) <= MAX_HNSW_M
    assert layout.pq_bits <= MAX_PQ_BITS and (not layout.pq_m or layout.ivf_dim(DIM) % layout.pq_m == 0)


@given(
    opq_dim=st.sampled_from([0, 8, 16, 32]),
    nlist=st.integers(1, MAX_NLIST),
    q_hnsw=st.sampled_from([0, 2, 32, MAX_HNSW_M]),
    pq=st.sampled_from([1, 2, 4, 8]),
    code=st.sampled_from(["", "x4", "x8", "x12", "x4fs"]),
)
def test_composed_strings_parse_to_their_parts(opq_dim, nlist, q_hnsw, pq, code) -> None:
    """A string assembled from parts parses back to exactly those parts (OPQ<m>_<d> with m = PQ<m>)."""
    opq = f"OPQ{pq}_{opq_dim}," if opq_dim else ""
    factory = f"{opq}IVF{nlist}{f'_HNSW{q_hnsw}' if q_hnsw else ''},PQ{pq}{code}"
    bits = int(code[1:].removesuffix("fs") or 8)
    assert parse_factory(factory, DIM) == Layout(
        "ivf", nlist=nlist, pq_m=pq, pq_bits=bits, opq_m=pq if opq_dim else 0, opq_dim=opq_dim,
        quantizer_hnsw_m=q_hnsw, fast_scan=code.endswith("fs"),
    )


def _saved_bytes(kind: str, data, tmp_path, parts):
    xb, _, _ = data
    index = GalleryIndex(DIM, kind)
    index.add(xb[:1000], np.arange(1000))
    path = tmp_path / "g.faiss"
    index.save(path)
    meta, _, raw = parts(path)
    return path, meta, raw


@pytest.mark.parametrize(
    ("kind", "patch", "message"),
    [
        ("IVF16_HNSW8,PQ8", None, None),  # a neighbour of the coarse HNSW graph past its 16 centroids
        ("OPQ4_16,IVF16,PQ4x4", lambda raw: raw.index(b"LTra") + 5, "opq matrix has 999 entries, expected 512"),
        ("IVF16,PQ8x4fs", lambda raw: raw.index(b"ilbl") + 4 + 8, "fast-scan lists .* do not fit"),
    ],
)
def test_hostile_bytes_of_scale_kinds_refused(kind, patch, message, data, tmp_path, parts, write_header) -> None:
    path, meta, raw = _saved_bytes(kind, data, tmp_path, parts)
    evil = bytearray(raw)
    if message is None:  # HNSW quantizer: rewrite the first stored neighbour id to 16 (one past the last)
        at = _first_hnsw_neighbour(bytes(raw))
        struct.pack_into("<i", evil, at, 16)
        message = "ivf hnsw quantizer neighbour ids point outside the index"
    else:
        struct.pack_into("<Q", evil, patch(bytes(raw)), 999)
    write_header(path, dict(meta), data=bytes(evil))
    for mmap in (False, True):
        with pytest.raises(IndexFormatError, match=message):
            GalleryIndex.load(path, mmap=mmap)


def _first_hnsw_neighbour(raw: bytes) -> int:
    """Offset of the first neighbour id of the IVF's HNSW quantizer (after its levels and offsets arrays)."""
    at = raw.index(b"IHNf") + 4 + 4 + 8 + 8 + 8 + 1 + 4  # fourcc, header
    for item in (8, 4, 4, 8):  # level probabilities, neighbours per level, levels, offsets
        (count,) = struct.unpack_from("<Q", raw, at)
        at += 8 + count * item
    return at + 8


@pytest.mark.parametrize("kind", ["OPQ8_16,IVF16_HNSW8,PQ8x4", "IVF16_HNSW8,PQ8", "IVF16,Flat", "IVF16,PQ8x4fs"])
def test_streamed_builds_of_scale_kinds_equal_one_add(kind, data, tmp_path) -> None:
    """The shard-streamed build (lists sized first by `_reserve`, OPQ applied there, each vector added to
    the list found then) writes the very index one add writes: same lists, codes and labels."""
    from uit_reid.retrieval import EmbeddingShards, build_index_from_shards, index_memory
    from uit_reid.retrieval.shards import write_shard

    xb, xq, _ = data
    x = unit(xb).astype(np.float16)
    for s in range(3):
        write_shard(tmp_path / "emb", s, x[s * 1000 : (s + 1) * 1000], [f"{i}" for i in range(s * 1000, (s + 1) * 1000)])
    streamed = build_index_from_shards(EmbeddingShards(tmp_path / "emb"), kind, train_size=640, progress=False)
    whole = GalleryIndex(DIM, kind, train_size=640)
    whole.add(x.astype(np.float32), [f"{i}" for i in range(N)])
    ivf = faiss.extract_index_ivf(streamed._index)
    sizes = [ivf.invlists.list_size(i) for i in range(ivf.nlist)]
    other = faiss.extract_index_ivf(whole._index)
    assert sizes == [other.invlists.list_size(i) for i in range(other.nlist)] and sum(sizes) == N
    assert np.array_equal(streamed.search(xq, 10)[1], whole.search(xq, 10)[1])
    assert faiss.serialize_index(streamed._index).tobytes() == faiss.serialize_index(whole._index).tobytes()
    real = len(faiss.serialize_index(streamed._index)) + 9 * len(streamed)
    assert 0.85 <= index_memory(kind, N, DIM) / real <= 1.2
