"""Indexes from embedding shards: compressed recall against exact search, re-ranking, `index add`,
memory-mapped loading and the memory-budget rules (real FAISS, real files)."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.cli import main
from uit_reid.retrieval import (
    EmbeddingShards,
    GalleryIndex,
    ShardVectors,
    add_shards,
    build_index_from_shards,
    choose_kind,
    index_memory,
    parse_bytes,
)
from uit_reid.retrieval.shards import write_shard

DIM = 32


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two embedding folders (4 + 2 shards of float16 unit vectors from 40 clusters) and queries."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, DIM))
    base = tmp_path_factory.mktemp("emb")
    out = {}
    for name, shards, start in (("a", 4, 0), ("b", 2, 4000)):
        for s in range(shards):
            x = clustered(1000, rng, centres).astype(np.float16)
            write_shard(base / name, s, x, [f"img/{start + s * 1000 + i}.jpg" for i in range(1000)])
        out[name] = base / name
    out["queries"] = clustered(60, rng, centres)
    return out


def exact_ids(shards: EmbeddingShards, queries: np.ndarray, k: int) -> np.ndarray:
    x = np.concatenate([np.asarray(v, np.float32) for v, _ in shards])
    ids = np.array([i for _, ids in shards for i in ids], dtype=object)
    return ids[np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :k]]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / exact.shape[1] for f, e in zip(found, exact)]))


def test_ivfpq_recall_and_exact_reranking_on_clustered_shards(folders) -> None:
    shards = EmbeddingShards(folders["a"])
    q = folders["queries"]
    exact = exact_ids(shards, q, 10)
    index = build_index_from_shards(shards, "IVF16,PQ8", progress=False)
    assert len(index) == 4000 and index.factory == "IVF16,PQ8"
    index.nprobe = 4
    _, found = index.search(q, 10)
    plain = recall(found, exact)
    assert 0.25 <= plain < 0.9  # 8-byte codes of 32-d vectors lose many neighbours ...
    scores, found = index.search(q, 10, rerank=ShardVectors(index), candidates=100)
    assert recall(found, exact) >= 0.97  # ... which exact re-ranking of 100 candidates restores
    # re-ranked scores are the exact cosines of the float16 vectors stored for those ids
    row = {id_: n for n, id_ in enumerate(i for _, ids in shards for i in ids)}
    x = shards.rows_of(np.vectorize(row.get, otypes=[np.int64])(found))
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", x, q) / np.linalg.norm(x, axis=-1), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)


def test_index_add_equals_a_build_over_all_shards(folders, tmp_path, capsys) -> None:
    both = tmp_path / "both"
    for n, (folder, s) in enumerate([(folders["a"], i) for i in range(4)] + [(folders["b"], i) for i in range(2)]):
        shards = EmbeddingShards(folder)
        write_shard(both, n, np.asarray(shards.vectors(s)), shards.ids(s))
    whole, grown = tmp_path / "whole.faiss", tmp_path / "grown.faiss"
    assert main(["index", "build", "--embeddings", str(both), "--out", str(whole)]) == 0
    assert main(["index", "build", "--embeddings", str(folders["a"]), "--out", str(grown)]) == 0
    assert main(["index", "add", "--index", str(grown), "--embeddings", str(folders["b"])]) == 0
    assert "added 2000 vectors" in capsys.readouterr().out
    a, b = GalleryIndex.load(whole), GalleryIndex.load(grown)
    assert a.ids() == b.ids() and len(b) == 6000
    sa, ia = a.search(folders["queries"], 20)
    sb, ib = b.search(folders["queries"], 20)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(sa, sb)
    # a refused add leaves the file exactly as it was
    before = grown.read_bytes()
    assert main(["index", "add", "--index", str(grown), "--embeddings", str(folders["b"])]) == 1
    assert "ids already in the index" in capsys.readouterr().err
    assert grown.read_bytes() == before
    # and an IVF-PQ index grows without retraining: the added codes are what the trained index gives them
    ivf = build_index_from_shards(EmbeddingShards(folders["a"]), "IVF16,PQ8", progress=False)
    ivf.save(tmp_path / "ivf.faiss")
    expected = GalleryIndex.load(tmp_path / "ivf.faiss")
    for v, ids in EmbeddingShards(folders["b"]):
        expected.add(np.asarray(v, np.float32), ids)
    assert main(["index", "add", "--index", str(tmp_path / "ivf.faiss"), "--embeddings", str(folders["b"])]) == 0
    got = GalleryIndex.load(tmp_path / "ivf.faiss")
    np.testing.assert_array_equal(got.search(folders["queries"], 10)[1], expected.search(folders["queries"], 10)[1])
    assert [e["rows"] for e in got.metadata["embeddings"]] == [4000, 2000]


@pytest.mark.parametrize("kind", ["IVF16,PQ8", pytest.param("OPQ8,IVF16,PQ8x4", marks=pytest.mark.slow), "ivf"])
def test_mmap_loaded_search_equals_in_memory_search(folders, tmp_path, kind) -> None:
    index = build_index_from_shards(EmbeddingShards(folders["a"]), kind, train_size=1000, progress=False)
    index.remove(["img/5.jpg", "img/77.jpg"])
    path = tmp_path / "g.faiss"
    index.save(path)
    memory, mapped = GalleryIndex.load(path), GalleryIndex.load(path, mmap=True)
    assert not memory.read_only and mapped.read_only
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(mapped._index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # the lists really are mapped from the file
    for nprobe in (1, 8):
        memory.nprobe = mapped.nprobe = nprobe
        s1, i1 = memory.search(folders["queries"], 10)
        s2, i2 = mapped.search(folders["queries"], 10)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)
    for action in (lambda: mapped.add(np.ones((1, DIM)), ["new.jpg"]), lambda: mapped.remove(["img/1.jpg"]),
                   lambda: mapped.save(tmp_path / "again.faiss")):
        with pytest.raises(ValueError, match="memory-mapped read-only; load it with mmap=False to change it"):
            action()


def test_memory_budget_picks_a_kind_that_fits(folders, tmp_path, capsys) -> None:
    assert parse_bytes("4GB") == 4 * 10**9 and parse_bytes("1.5 GiB") == int(1.5 * 2**30) and parse_bytes("512") == 512
    for bad in ("4 parsecs", "", "-1GB", "0"):
        with pytest.raises(ValueError, match="size"):
            parse_bytes(bad)
    assert choose_kind(100_000, 512, 4 * 10**9) == "Flat"
    assert choose_kind(10_000_000, 512, 4 * 10**9) == "IVF4096,PQ256"
    assert choose_kind(100_000_000, 512, 3 * 10**9) == "OPQ8,IVF4096,PQ8"
    with pytest.raises(ValueError, match="do not fit in 1000 bytes even as 8-byte PQ codes"):
        choose_kind(10_000_000, 512, 1000)
    out = tmp_path / "g.faiss"
    budget = 500_000  # below the 4000 x 32 x 4 bytes of full vectors
    assert choose_kind(4000, DIM, budget) == "IVF8,PQ32"
    assert main(["index", "build", "--embeddings", str(folders["a"]), "--out", str(out),
                 "--memory-budget", str(budget)]) == 0
    assert "as IVF8,PQ32" in capsys.readouterr().out
    index = GalleryIndex.load(out)
    assert index_memory(index.factory, 4000, DIM) <= budget
    assert main(["index", "build", "--embeddings", str(folders["a"]), "--out", str(out), "--kind", "flat",
                 "--memory-budget", "1GB"]) == 1
    assert "give --kind or --memory-budget, not both" in capsys.readouterr().err


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 10**9), dim=st.sampled_from([64, 128, 256, 512, 768]), budget=st.integers(10**6, 10**12))
def test_chosen_kinds_fit_their_budget(n, dim, budget) -> None:
    try:
        kind = choose_kind(n, dim, budget)
    except ValueError as err:
        assert "do not fit" in str(err)
        return
    assert index_memory(kind, n, dim) <= budget


def test_index_memory_matches_real_indexes(folders) -> None:
    """The arithmetic against the bytes FAISS really serialises for the same index."""
    shards = EmbeddingShards(folders["a"])
    for kind in ("Flat", "IVF16,Flat", "IVF16,PQ8x6", "OPQ8,IVF16,PQ8x4"):
        index = build_index_from_shards(shards, kind, train_size=1000, progress=False)
        real = len(faiss.serialize_index(index._index)) + 9 * len(index)
        assert 0.85 <= index_memory(kind, len(index), DIM) / real <= 1.2, kind


def test_a_foreign_or_changed_embedding_folder_is_refused(folders, tmp_path) -> None:
    index = build_index_from_shards(EmbeddingShards(folders["a"]), "IVF16,PQ8", progress=False)
    with pytest.raises(ValueError, match="built from 1 embedding folders, 2 given"):
        ShardVectors(index, [folders["a"], folders["b"]])
    with pytest.raises(ValueError, match=f"embedding folder {folders['b']} holds 2000 vectors, the index recorded 4000"):
        ShardVectors(index, [folders["b"]])
    manifest_less = json.dumps(index.metadata)
    assert "embeddings" in manifest_less
    with pytest.raises(ValueError, match="ids already in the index"):
        add_shards(index, EmbeddingShards(folders["a"]), progress=False)


def test_streamed_ids_are_checked_in_one_pass_and_repeats_still_refused(folders, tmp_path) -> None:
    """Shards whose ids are all new are added without an id lookup table; a repeated id is still refused."""
    index = build_index_from_shards(EmbeddingShards(folders["a"]), "IVF16,PQ8", progress=False)
    assert index._ids._keys is None  # no lookup table was built for the 4,000 new ids
    assert index.ids() == [i for _, ids in EmbeddingShards(folders["a"]) for i in ids]
    repeated = tmp_path / "repeated"
    source = EmbeddingShards(folders["b"])
    write_shard(repeated, 0, np.asarray(source.vectors(0)), source.ids(0))
    write_shard(repeated, 1, np.asarray(source.vectors(1)), source.ids(1)[:-1] + [source.ids(0)[7]])
    with pytest.raises(ValueError, match=r"ids already in the index: \['img/4007.jpg'\]"):
        build_index_from_shards(EmbeddingShards(repeated), "flat", progress=False)
    with pytest.raises(ValueError, match=r"ids already in the index: \['img/4007.jpg'\]"):
        add_shards(index, EmbeddingShards(repeated), progress=False)
