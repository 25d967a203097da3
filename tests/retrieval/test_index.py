"""GalleryIndex on real FAISS: exactness, ids, removal, save/load round trips and failure modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uit_reid._errors import EncoderMismatchError
from uit_reid.retrieval import GalleryIndex, IndexFormatError, default_nlist

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_topk(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(unit(xq) @ unit(xb).T), axis=1, kind="stable")[:, :k]


def clustered(n: int, dim: int, rng: np.random.Generator, n_centers: int = 32) -> np.ndarray:
    centers = rng.standard_normal((n_centers, dim))
    return (centers[rng.integers(0, n_centers, n)] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)


def saved(kind, xb, path):
    """An index of ``kind`` over ``xb`` (ids 0..n-1), saved at ``path``."""
    index = GalleryIndex(DIM, kind)
    index.add(xb, np.arange(xb.shape[0]))
    index.save(path)
    return index


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return clustered(3000, DIM, rng), clustered(50, DIM, rng)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_cosine_scores_and_ids(kind, data):
    xb, xq = data
    ids = np.arange(xb.shape[0], dtype=np.int64) * 7 + 3
    index = GalleryIndex(DIM, kind)
    index.add(xb * 5.0, ids)  # raw (unnormalised) features: the index normalises
    assert len(index) == xb.shape[0]
    scores, found = index.search(torch.from_numpy(xq), k=5)
    assert scores.shape == found.shape == (xq.shape[0], 5)
    assert found.dtype == np.int64
    exact = ids[exact_topk(xb, xq, 5)]
    cos = np.sum(unit(xq)[:, None, :] * unit(xb)[(found - 3) // 7], axis=-1)
    np.testing.assert_allclose(scores, cos, atol=1e-5)  # scores are the cosines of the returned ids
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    if kind == "flat":
        np.testing.assert_array_equal(found, exact)


def test_ivf_recall_on_clustered_data(data):
    xb, xq = data
    index = GalleryIndex(DIM, "ivf")
    index.add(xb, np.arange(xb.shape[0]))
    assert index.nlist == default_nlist(xb.shape[0])
    assert index.nlist > 1
    _, found = index.search(xq, 10)
    exact = exact_topk(xb, xq, 10)
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.9
    index.nprobe = index.nlist  # visiting every list is exact
    _, found = index.search(xq, 10)
    assert np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]) == 1.0


def test_default_nlist():
    assert default_nlist(1_000_000) == 2048
    assert default_nlist(100_000) == 512
    assert default_nlist(10) == 1
    assert all(default_nlist(n) * 39 <= n for n in (39, 500, 5000, 10**6))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_remove(kind, data):
    xb, xq = data
    index = GalleryIndex(DIM, kind)
    index.add(xb[:500], np.arange(500))
    _, before = index.search(xb[:3], 1)
    assert before[:, 0].tolist() == [0, 1, 2]
    assert index.remove([0, 1]) == 2
    assert len(index) == 498 and 0 not in index and 2 in index
    _, after = index.search(xb[:3], 4)
    assert 0 not in after and 1 not in after and after[2, 0] == 2
    with pytest.raises(KeyError, match="not in the index"):
        index.remove([0])
    index.add(xb[:1], [0])  # a removed id can come back
    assert index.search(xb[:1], 1)[1][0, 0] == 0


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "IVF8,PQ4", "OPQ4,IVF8,PQ4x6", "HNSW8,Flat"])
def test_save_load_round_trip(kind, data, tmp_path, read_header):
    xb, xq = data
    index = GalleryIndex(DIM, kind, fingerprint="clip-b16@abc")
    index.add(xb, np.arange(xb.shape[0]) + 10**12)
    index.remove([10**12 + 5])
    if kind == "ivf":
        index.nprobe = 3
    if kind == "hnsw":
        index.ef_search = 40
    scores, ids = index.search(xq, 10)
    path = tmp_path / "sub" / "gallery.faiss"
    index.save(path)
    meta = read_header(path)
    assert meta["dim"] == DIM and meta["kind"] == kind and meta["fingerprint"] == "clip-b16@abc"
    assert meta["normalization"] == "l2" and meta["format_version"] == 3
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["gallery.faiss"]  # one file
    loaded = GalleryIndex.load(path, expected_dim=DIM, expected_fingerprint="clip-b16@abc")
    assert len(loaded) == len(index) and loaded.parameters() == index.parameters()
    scores2, ids2 = loaded.search(xq, 10)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_allclose(scores2, scores, atol=1e-6)
    assert not list((tmp_path / "sub").glob("*.tmp"))  # temporary files were moved into place


def test_string_ids_round_trip(data, tmp_path):
    xb, xq = data
    names = [f"imgs/person_{i:04d}.jpg" for i in range(200)]
    index = GalleryIndex(DIM, "flat")
    index.add(xb[:200], names)
    scores, ids = index.search(xb[:3], 2)
    assert ids.dtype == object and ids[:, 0].tolist() == names[:3]
    index.remove(names[1])
    assert index.search(xb[1:2], 1)[1][0, 0] != names[1]
    index.save(tmp_path / "g.faiss")
    loaded = GalleryIndex.load(tmp_path / "g.faiss")
    assert loaded.id_type == "str" and loaded.ids() == index.ids()
    np.testing.assert_array_equal(loaded.search(xq, 5)[1], index.search(xq, 5)[1])
    with pytest.raises(TypeError, match="string ids"):
        loaded.add(xb[:1], [5])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_k_is_capped_at_the_index_size(data, kind):
    xb, _ = data
    index = GalleryIndex(DIM, kind, nlist=2) if kind == "ivf" else GalleryIndex(DIM, kind)
    index.add(xb[:200], np.arange(200))
    index.remove([7])
    scores, ids = index.search(xb[:2], 10**9)  # a huge k costs nothing: it is capped at len(index)
    assert scores.shape == ids.shape == (2, 199)
    exact = GalleryIndex(DIM, "flat")
    exact.add(xb[:3], ["a", "b", "c"])
    scores, ids = exact.search(xb[:1], 5)
    assert ids.shape == (1, 3) and sorted(ids[0].tolist()) == ["a", "b", "c"]
    empty = GalleryIndex(DIM, "hnsw")
    s, i = empty.search(xb[:2], 3)
    assert s.shape == i.shape == (2, 0)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            exact.search(xb[:1], bad)


def test_dimension_and_fingerprint_mismatches(data, tmp_path):
    xb, _ = data
    index = GalleryIndex(DIM, "flat", fingerprint="enc-A")
    index.add(xb[:10], np.arange(10))
    with pytest.raises(ValueError, match="queries has dimension 8 but the index has dim 16"):
        index.search(np.ones((1, 8)), 1)
    with pytest.raises(ValueError, match="features has dimension 8"):
        index.add(np.ones((1, 8)), [99])
    with pytest.raises(EncoderMismatchError, match="'enc-A'.*'enc-B'"):
        index.search(xb[:1], 1, fingerprint="enc-B")
    with pytest.raises(EncoderMismatchError, match="fingerprint mismatch in add"):
        index.add(xb[10:11], [10], fingerprint="enc-B")
    index.save(tmp_path / "g.faiss")
    with pytest.raises(ValueError, match="has dim 16, expected 32"):
        GalleryIndex.load(tmp_path / "g.faiss", expected_dim=32)
    with pytest.raises(EncoderMismatchError, match="built with 'enc-A', expected 'enc-B'"):
        GalleryIndex.load(tmp_path / "g.faiss", expected_fingerprint="enc-B")
    loaded = GalleryIndex.load(tmp_path / "g.faiss")
    with pytest.raises(ValueError, match="'enc-A'.*'enc-C'"):
        loaded.search(xb[:1], 1, fingerprint="enc-C")


def test_truncated_or_corrupted_files_fail_clearly(data, tmp_path, read_header, write_header):
    path = tmp_path / "g.faiss"
    saved("ivf", data[0], path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexFormatError, match="truncated"):
        GalleryIndex.load(path)
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(IndexFormatError, match="checksum"):
        GalleryIndex.load(path)
    path.write_bytes(raw[:20])
    with pytest.raises(IndexFormatError, match="truncated"):
        GalleryIndex.load(path)
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(IndexFormatError, match="not a GalleryIndex file"):
        GalleryIndex.load(path)
    path.write_bytes(raw)
    meta = read_header(path)
    meta["format_version"] = 99
    write_header(path, meta)
    with pytest.raises(IndexFormatError, match="format_version 99"):
        GalleryIndex.load(path)
    with pytest.raises(FileNotFoundError, match="no index file"):
        GalleryIndex.load(tmp_path / "missing.faiss")


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        GalleryIndex(DIM, "lsh")
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        GalleryIndex(0)
    index = GalleryIndex(DIM, "flat")
    x = np.ones((2, DIM), dtype=np.float32)
    with pytest.raises(ValueError, match="ids has 1 entries but features has 2 rows"):
        index.add(x, [1])
    with pytest.raises(ValueError, match="ids contains duplicates"):
        index.add(x, [1, 1])
    with pytest.raises(ValueError, match="must not contain -1"):
        index.add(x, np.array([-1, 2]))
    with pytest.raises(TypeError, match="all integers or all strings"):
        index.add(x, [1, "a"])
    with pytest.raises(ValueError, match="all-zero rows"):
        index.add(np.zeros((1, DIM)), [1])
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, DIM), np.nan), [1])
    index.add(x[:1], [1])
    with pytest.raises(ValueError, match="already in the index"):
        index.add(x[:1], [1])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(x, 0)
    with pytest.raises(ValueError, match="nprobe applies to kind='ivf'"):
        index.nprobe = 4
    with pytest.raises(ValueError, match="cannot save an empty"):
        GalleryIndex(DIM, "ivf").save("unused.faiss")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_positions_number_items_in_ids_order(kind) -> None:
    """``positions=True`` gives each hit's position in ``ids()`` (what the service numbers), removals included."""
    rng = np.random.default_rng(3)
    index = GalleryIndex(16, kind)
    names = [f"p{i}.jpg" for i in range(50)]
    index.add(rng.standard_normal((50, 16)), names)
    index.remove(["p0.jpg", "p7.jpg", "p20.jpg"])
    q = rng.standard_normal((5, 16))
    scores, ids = index.search(q, 10)
    same, positions = index.search(q, 10, positions=True)
    listed = index.ids()
    assert np.array_equal(scores, same)
    assert [[listed[p] for p in row] for row in positions.tolist()] == ids.tolist()
    assert index.ids_at(positions).tolist() == ids.tolist()
    with pytest.raises(IndexError, match="positions must be in 0..46"):
        index.ids_at([47])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_saved_faiss_bytes_are_faiss_own_serialisation(kind, data, tmp_path, read_header) -> None:
    """The streamed write gives byte for byte what ``faiss.serialize_index`` gives, at the header's size and checksum."""
    import hashlib

    import faiss

    path = tmp_path / "gallery.faiss"
    index = saved(kind, data[0], path)
    meta = read_header(path)
    expected = faiss.serialize_index(index._index).tobytes()
    stored = path.read_bytes()[-meta["index_bytes"]:]
    assert meta["index_bytes"] == len(expected) and stored == expected
    assert meta["index_sha256"] == hashlib.sha256(expected).hexdigest()


def test_a_save_whose_second_pass_differs_writes_nothing(data, tmp_path, monkeypatch) -> None:
    import uit_reid.retrieval.index_file as index_file

    path = tmp_path / "gallery.faiss"
    index = saved("flat", data[0], path)
    before = path.read_bytes()
    real, calls = index_file._stream_index, []

    def drifting(idx, sink):  # the second serialisation of a save gives other bytes
        calls.append(1)
        digest, size = real(idx, sink)
        return (digest, size) if len(calls) % 2 else ("0" * 64, size)

    monkeypatch.setattr(index_file, "_stream_index", drifting)
    with pytest.raises(RuntimeError, match=r"FAISS serialised the index differently twice; nothing was written$"):
        index.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["gallery.faiss"]


def test_flat_ties_keep_insertion_order_across_gallery_blocks() -> None:
    """Exact search over more vectors than one matrix-product block: equal scores come back in the order
    the items were added, as a full stable sort would give (some duplicates straddle block edges)."""
    from uit_reid.retrieval._index_search import FLAT_GALLERY_BLOCK

    rng = np.random.default_rng(3)
    n = 2 * FLAT_GALLERY_BLOCK + 500
    base = rng.standard_normal((4, 8)).astype(np.float32)
    which = rng.integers(0, 4, n)
    # 64 copies of the query's vector spread over all three blocks, the rest among three others
    copies = np.sort(rng.choice(n, 64, replace=False))
    copies[:2] = [FLAT_GALLERY_BLOCK - 1, FLAT_GALLERY_BLOCK]
    which[copies] = 0
    which[np.setdiff1d(np.arange(n), copies)] = rng.integers(1, 4, n - 64)
    index = GalleryIndex(8)
    index.add(base[which], np.arange(n) * 7)  # ids are not slots: the order is the adding order
    scores, ids = index.search(base[:1], k=40)
    assert np.all(scores[0] == scores[0, 0])
    assert ids[0].tolist() == (np.sort(copies)[:40] * 7).tolist()
