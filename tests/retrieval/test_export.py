"""`uit-reid index export`: plain FAISS + parquet ids (clip-retrieval's layout) answer as GalleryIndex.search does."""

from __future__ import annotations

import shutil
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from uit_reid.cli import main
from uit_reid.retrieval import GalleryIndex
from uit_reid.retrieval.export import export_index

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clip_retrieval_rows(folder: Path) -> list:
    """What clip-retrieval's back end does: concatenate the sorted parquet files; row i is FAISS label i."""
    tables = [pq.read_table(p) for p in sorted((folder / "metadata").glob("*.parquet"))]
    return [row for t in tables for row in t.column("id").to_pylist()]


@pytest.mark.parametrize(("kind", "string_ids"), [("flat", True), ("IVF8,PQ4", False), ("IVF8_HNSW4,PQ4x4fs", True),
                                                  ("hnsw", False)])
def test_plain_faiss_and_parquet_give_the_same_top_k(kind, string_ids, tmp_path) -> None:
    rng = np.random.default_rng(0)
    xb, xq = rng.standard_normal((600, DIM)), rng.standard_normal((20, DIM))
    ids = [f"img/{i:04d}.jpg" for i in range(600)] if string_ids else list(range(1000, 1600))
    index = GalleryIndex(DIM, kind)
    index.add(xb, ids)
    if kind != "hnsw":
        index.remove(ids[:50:3])  # removed items leave holes in the labels: the table keeps them as nulls
    index.save(tmp_path / "g.faiss")
    assert main(["index", "export", str(tmp_path / "g.faiss"), "--out", str(tmp_path / "out")]) == 0
    plain = faiss.read_index(str(tmp_path / "out" / "image.index"))
    rows = clip_retrieval_rows(tmp_path / "out")
    assert len(rows) == index.num_slots and sum(r is not None for r in rows) == len(index)
    scores, labels = plain.search(unit(xq), 10)
    expected_scores, expected = index.search(xq, 10)
    assert [[rows[label] for label in line] for line in labels.tolist()] == expected.tolist()
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    mapped = faiss.read_index(str(tmp_path / "out" / "image.index"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    assert np.array_equal(mapped.search(unit(xq), 10)[1], labels)
    if string_ids:
        table = pq.read_table(tmp_path / "out" / "metadata" / "metadata_0.parquet")
        assert table.column("image_path").to_pylist() == rows


def test_exports_that_would_mislead_plain_faiss_are_refused(tmp_path) -> None:
    rng = np.random.default_rng(1)
    index = GalleryIndex(DIM, "hnsw")
    index.add(rng.standard_normal((50, DIM)), np.arange(50))
    index.remove([3, 4])
    with pytest.raises(ValueError, match="cannot export this hnsw index: 2 removed items are still in its graph"):
        export_index(index, tmp_path / "out")
    ivf = GalleryIndex(DIM, "IVF2,Flat")
    ivf.add(rng.standard_normal((100, DIM)), np.arange(100))
    ivf.save(tmp_path / "ivf.faiss")
    with pytest.raises(ValueError, match="cannot export a memory-mapped index: load it with mmap=False first"):
        export_index(GalleryIndex.load(tmp_path / "ivf.faiss", mmap=True), tmp_path / "out")
    with pytest.raises(ValueError, match="cannot export an empty, untrained index"):
        export_index(GalleryIndex(DIM, "ivf"), tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="it is a file, not a folder"):
        export_index(_one(), tmp_path / "file")
    assert not (tmp_path / "out").exists()


def _one() -> GalleryIndex:
    index = GalleryIndex(DIM, "flat")
    index.add(np.ones((1, DIM)), [1])
    return index


@pytest.mark.parametrize(("recorded", "warned"), [("2.0.0", True), ("0.9.1", True), ("1.7.4", False)])
def test_another_major_faiss_version_is_named_once_on_load(recorded, warned, tmp_path, parts, write_header,
                                                           caplog) -> None:
    """A real saved file whose recorded FAISS version is edited (checksums recomputed, as a newer writer would)."""
    assert faiss.__version__.startswith("1.")
    index = _one()
    index.save(tmp_path / "g.faiss")
    meta, _, _ = parts(tmp_path / "g.faiss")
    assert meta["faiss_version"] == faiss.__version__
    meta["faiss_version"] = recorded
    write_header(tmp_path / "g.faiss", dict(meta))
    with caplog.at_level("WARNING", logger="uit_reid.retrieval.index_file"):
        loaded = GalleryIndex.load(tmp_path / "g.faiss")
    assert loaded.search(np.ones((1, DIM)), 1)[1].tolist() == [[1]]
    messages = [r.getMessage() for r in caplog.records if r.name == "uit_reid.retrieval.index_file"]
    if warned:
        assert messages == [f"index file {tmp_path / 'g.faiss'} was written by FAISS {recorded}, this is FAISS "
                            f"{faiss.__version__} (another major version): if it misbehaves, rebuild or re-save it"]
    else:
        assert messages == []


@pytest.mark.parametrize("kind", ["IVF8,PQ4", "IVF8_HNSW4,Flat"])
def test_an_on_disk_index_exports_as_faiss_on_disk_lists_with_its_ids(kind, tmp_path, caplog) -> None:
    """Plain FAISS (its OnDiskInvertedLists) + parquet answer as GalleryIndex.search over the on-disk index."""
    import logging
    import os

    from uit_reid.retrieval.distributed_build import build_ondisk_index
    from uit_reid.retrieval.export import LISTS_NAME, ONDISK_INDEX_NAME
    from uit_reid.retrieval.shards import EmbeddingShards, write_shard

    rng = np.random.default_rng(2)
    for shard in range(3):
        x = unit(rng.standard_normal((200, DIM)))
        write_shard(tmp_path / "emb", shard, x.astype(np.float16), [f"img/{shard}-{i:03d}.jpg" for i in range(200)])
    build_ondisk_index(EmbeddingShards(tmp_path / "emb"), kind, tmp_path / "g.index", progress=False)
    index = GalleryIndex.load(tmp_path / "g.index")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="uit_reid"):
        assert main(["index", "export", str(tmp_path / "g.index"), "--out", str(out)]) == 0
    lists = out / LISTS_NAME
    assert os.path.samefile(lists, tmp_path / "g.index.ivfdata")  # one filesystem: a hard link, no copy
    assert f"linked {lists} to {tmp_path / 'g.index.ivfdata'} (a hard link: no bytes copied)" in caplog.messages
    xq = rng.standard_normal((20, DIM))
    expected_scores, expected = index.search(xq, 10)
    rows = clip_retrieval_rows(out)
    assert len(rows) == len(index) == 600
    shutil.copytree(out, tmp_path / "moved")  # IO_FLAG_ONDISK_SAME_DIR (clip-retrieval's flag) finds the lists beside it
    for path, flags, named in ((out, 0, lists), (out, faiss.IO_FLAG_READ_ONLY, lists),
                               (tmp_path / "moved", faiss.IO_FLAG_ONDISK_SAME_DIR, tmp_path / "moved" / LISTS_NAME)):
        plain = faiss.read_index(str(path / ONDISK_INDEX_NAME), flags)
        assert faiss.downcast_InvertedLists(faiss.extract_index_ivf(plain).invlists).filename == str(named.resolve())
        scores, labels = plain.search(unit(xq), 10)
        assert [[rows[label] for label in line] for line in labels.tolist()] == expected.tolist()
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert faiss.IO_FLAG_MMAP & faiss.IO_FLAG_SKIP_IVF_DATA  # why the docs say not IO_FLAG_MMAP for on-disk lists
    export_index(index, tmp_path / "again")  # the Python API on a served index: its lists keep their own name
    assert faiss.downcast_InvertedLists(faiss.extract_index_ivf(index._index).invlists).filename == str(
        tmp_path / "g.index.ivfdata")
    if os.path.isdir("/dev/shm") and os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev:
        other = Path("/dev/shm") / f"uit-reid-export-{os.getpid()}"
        try:
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="uit_reid"):
                export_index(index, other)
            assert not os.path.samefile(other / LISTS_NAME, lists)
            assert (other / LISTS_NAME).read_bytes() == lists.read_bytes()
            assert any(m.startswith(f"copying {tmp_path / 'g.index.ivfdata'} to {other / LISTS_NAME}")
                       for m in caplog.messages)
            copied = faiss.read_index(str(other / ONDISK_INDEX_NAME))
            assert np.array_equal(copied.search(unit(xq), 10)[1], labels)
        finally:
            shutil.rmtree(other, ignore_errors=True)
