"""GalleryIndex against kills, hostile files, edited headers, bad ids and huge k (real processes, real files)."""

from __future__ import annotations

import os
import random
import signal
import stat
import struct
import time

import faiss
import numpy as np
import pytest

from uit_reid.retrieval import GalleryIndex, IndexFormatError

DIM = 16


def _index(n: int, kind: str = "flat", offset: int = 0, **kw) -> GalleryIndex:
    rng = np.random.default_rng(n + offset)
    index = GalleryIndex(DIM, kind, fingerprint="enc-A", **kw)
    index.add(rng.standard_normal((n, DIM)).astype(np.float32), np.arange(n) + offset)
    return index


@pytest.mark.slow
def test_save_is_atomic_under_sigkill(tmp_path) -> None:
    """40 SIGKILLs at random instants of real saves: the file always loads as the old or the new index."""
    rng = np.random.default_rng(0)
    old = GalleryIndex(64, "flat")
    old.add(rng.standard_normal((60_000, 64)).astype(np.float32), [f"old/{i}.jpg" for i in range(60_000)])
    new = GalleryIndex(64, "flat")
    new.add(rng.standard_normal((50_000, 64)).astype(np.float32), [f"new/{i}.jpg" for i in range(50_000)])
    path = tmp_path / "gallery.faiss"
    old.save(path)
    start = time.perf_counter()
    old.save(path)
    new.save(path)
    cycle_s = time.perf_counter() - start  # one round of the child's loop, as timed here
    pick = random.Random(0)
    seen: set[str] = set()
    kills = 0
    # at least 40 kills, more (up to 160) until both saves were hit: the child's timing varies with load
    while kills < 40 or (seen != {"old/", "new/"} and kills < 160):
        kills += 1
        pid = os.fork()
        if pid == 0:  # child: alternate real saves until killed
            try:
                while True:
                    old.save(path)
                    new.save(path)
            finally:
                os._exit(1)
        time.sleep(pick.uniform(0.0, 2.0 * cycle_s))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        loaded = GalleryIndex.load(path)
        assert len(loaded) in (60_000, 50_000)
        prefix = "old/" if len(loaded) == 60_000 else "new/"
        assert loaded.ids()[0] == prefix + "0.jpg" and loaded.ids()[-1] == f"{prefix}{len(loaded) - 1}.jpg"
        seen.add(prefix)
    assert seen == {"old/", "new/"}  # the kills landed in both saves


def test_float_ids_are_refused_everywhere() -> None:
    index = _index(5)
    for bad in ([1.9], np.array([2.5]), 1.0, np.float32(3.0), [True]):
        with pytest.raises(TypeError, match="integers"):
            index.remove(bad)
    with pytest.raises(TypeError, match="ids must be integers, got float id 1.9"):
        1.9 in index  # noqa: B015
    with pytest.raises(TypeError):
        index.add(np.ones((1, DIM)), [7.0])
    assert len(index) == 5 and 1 in index and 2 in index and np.int64(3) in index
    assert index.remove(np.array([1, 2])) == 2


def test_huge_k_costs_nothing() -> None:
    index = _index(200)
    scores, ids = index.search(np.ones((1, DIM)), k=10**9)
    assert ids.shape == (1, 200) and set(ids[0].tolist()) == set(range(200))


@pytest.fixture
def saved(tmp_path, parts):
    return lambda n=3, kind="flat", where=tmp_path: _saved(where, parts, n, kind)


def _saved(tmp_path, parts, n: int, kind: str):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "g.faiss"
    _index(n, kind, **({"nlist": 2} if kind == "ivf" else {})).save(path)
    meta, _, data = parts(path)
    return path, meta, bytearray(data)


def test_hostile_faiss_bytes_refused_before_faiss(tmp_path, saved, write_header) -> None:
    path, meta, data = saved()
    assert data[:4] == b"IxM2" and data[37:41] == b"IxFI"
    # the 162-byte flat index claiming 2**30 floats (4 GiB), with recomputed checksums
    evil = bytearray(data)
    struct.pack_into("<Q", evil, 74, 2**30)
    write_header(path, meta, data=bytes(evil))
    with pytest.raises(IndexFormatError, match=r"flat index vectors has 1073741824 entries, expected 48"):
        GalleryIndex.load(path)
    struct.pack_into("<q", evil, 45, 2**28)  # ... and an inner ntotal to match
    write_header(path, meta, data=bytes(evil))
    with pytest.raises(IndexFormatError, match="more than the file holds"):
        GalleryIndex.load(path)

    cases = {
        "another index type": (b"IxF2", 0, "index type is b'IxF2'"),
        "another dimension": (struct.pack("<i", 8), 41, "has dimension 8, expected 16"),
        "another metric": (struct.pack("<i", 1), 70, "uses metric 1"),
    }
    for patch, at, message in cases.values():
        evil = bytearray(data)
        evil[at : at + len(patch)] = patch
        write_header(path, meta, data=bytes(evil))
        with pytest.raises(IndexFormatError, match=message):
            GalleryIndex.load(path)
    write_header(path, meta, data=bytes(data) + b"\0")
    with pytest.raises(IndexFormatError, match="1 unexpected bytes after the index"):
        GalleryIndex.load(path)
    _, _, ivf_data = saved(100, "ivf", tmp_path / "ivf")
    write_header(path, meta, data=bytes(ivf_data))  # real faiss bytes of another kind
    with pytest.raises(IndexFormatError, match="index type is b'IwFl'"):
        GalleryIndex.load(path)


def test_hostile_hnsw_links_refused(tmp_path, saved, write_header) -> None:
    path, meta, data = saved(20, "hnsw")
    index = faiss.deserialize_index(np.frombuffer(bytes(data), np.uint8))
    hnsw = faiss.downcast_index(faiss.downcast_index(index).index).hnsw
    neighbours = faiss.vector_to_array(hnsw.neighbors)
    needle = neighbours.astype("<i4").tobytes()
    at = bytes(data).index(needle)
    evil = bytearray(data)
    struct.pack_into("<i", evil, at, 10**9)  # a graph link far outside the index
    write_header(path, meta, data=bytes(evil))
    with pytest.raises(IndexFormatError, match="neighbour ids point outside the index"):
        GalleryIndex.load(path)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "IVF4,PQ4"])
def test_edited_id_map_refused(tmp_path, kind, saved, parts, write_header) -> None:
    path, meta, data = saved(300, kind)
    _, id_map, _ = parts(path)
    n = meta["slots"]
    live, values = np.frombuffer(id_map[:n], np.uint8), np.frombuffer(id_map[n:], "<i8")
    original = dict(meta)
    write_header(path, dict(meta), rehash=False, id_map=live.tobytes() + values[::-1].tobytes())  # unhashed edit
    with pytest.raises(IndexFormatError, match="id map does not match its checksum"):
        GalleryIndex.load(path)
    dup = values.copy()
    dup[-1] = dup[0]
    write_header(path, dict(original), id_map=live.tobytes() + dup.tobytes())  # duplicated id, rehashed
    with pytest.raises(IndexFormatError, match="the same id twice"):
        GalleryIndex.load(path)
    fewer = live[:-1].tobytes() + values[:-1].tobytes()  # one slot fewer than stored vectors
    write_header(path, dict(original, slots=n - 1), id_map=fewer)
    with pytest.raises(IndexFormatError, match="do not match the id map's"):
        GalleryIndex.load(path)
    flags = live.copy()
    flags[3] = 7
    write_header(path, dict(original), id_map=flags.tobytes() + values.tobytes())
    with pytest.raises(IndexFormatError, match="live flags are not 0 or 1"):
        GalleryIndex.load(path)
    minus = values.copy()
    minus[2] = -1
    write_header(path, dict(original), id_map=live.tobytes() + minus.tobytes())
    with pytest.raises(IndexFormatError, match="the id -1"):
        GalleryIndex.load(path)
    write_header(path, dict(original), id_map=live.tobytes() + values[:-1].tobytes())
    with pytest.raises(IndexFormatError, match=r"holds 2392 id bytes for 300 slots"):
        GalleryIndex.load(path)
    write_header(path, dict(original, slots=10**12))
    with pytest.raises(IndexFormatError, match="shorter than its 1000000000000 slots"):
        GalleryIndex.load(path)
    write_header(path, dict(original, id_type="str"))
    with pytest.raises(IndexFormatError, match="string offsets"):
        GalleryIndex.load(path)


def test_crafted_string_id_maps_refused(tmp_path, parts, write_header) -> None:
    rng = np.random.default_rng(0)
    index = GalleryIndex(DIM, "flat")
    index.add(rng.standard_normal((4, DIM)), ["a.jpg", "bb.jpg", "ccc.jpg", "d.jpg"])
    index.remove("bb.jpg")
    path = tmp_path / "g.faiss"
    index.save(path)
    meta, id_map, _ = parts(path)
    live, offsets, text = id_map[:4], np.frombuffer(id_map[4:44], "<u8").copy(), id_map[44:]
    assert bytes(live) == b"\x01\x00\x01\x01" and offsets.tolist() == [0, 5, 5, 12, 17] and text == b"a.jpgccc.jpgd.jpg"
    cases = {
        "beyond the text": (live, np.array([0, 5, 5, 12, 10**15], "<u8"), text, "offsets are out of range"),
        "going backwards": (live, np.array([0, 5, 5, 3, 17], "<u8"), text, "offsets are out of range"),
        "a removed slot with text": (live, np.array([0, 2, 5, 12, 17], "<u8"), text, "offsets are out of range"),
        "invalid UTF-8": (live, offsets, b"\xff" + text[1:], "not str ids"),
        "a character split across two ids": (live, offsets, b"a.jpgccc.jp\xc3\xa9.jpg", "not str ids"),
        "the same id twice": (live, offsets, b"d.jpgccc.jpgd.jpg", "the same id twice"),
        "truncated offsets": (live, offsets[:2], b"", "offsets are truncated"),
    }
    for name, (flags, offs, body, message) in cases.items():
        write_header(path, dict(meta), id_map=bytes(flags) + offs.astype("<u8").tobytes() + body)
        with pytest.raises(IndexFormatError, match=message):
            GalleryIndex.load(path)
        assert name


def test_hostile_pq_and_opq_bytes_refused(tmp_path, parts, write_header) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, DIM)).astype(np.float32)
    for kind, patch_at, message in (
        ("IVF4,PQ4", lambda data: data.index(b"ilar") + 12, "ivf code size 999, expected 4"),
        ("OPQ4,IVF4,PQ4", lambda data: data.index(b"LTra") + 5, "opq matrix has 999 entries, expected 256"),
    ):
        index = GalleryIndex(DIM, kind, train_size=600)
        index.add(x, np.arange(600))
        path = tmp_path / "pq.faiss"
        index.save(path)
        meta, _, data = parts(path)
        evil = bytearray(data)
        struct.pack_into("<Q", evil, patch_at(bytes(data)), 999)
        write_header(path, dict(meta), data=bytes(evil))
        with pytest.raises(IndexFormatError, match=message):
            GalleryIndex.load(path)
        with pytest.raises(IndexFormatError, match=message):
            GalleryIndex.load(path, mmap=True)
        pq_at = bytes(data).index(b"ilar") - 4 * DIM * 256 - 16  # the PQ's bits field, before its centroids
        evil = bytearray(data)
        struct.pack_into("<Q", evil, pq_at, 16)  # 16-bit codes: 2**16 centroids claimed
        write_header(path, dict(meta), data=bytes(evil))
        with pytest.raises(IndexFormatError, match=r"pq \(d, M, bits\) = \(16, 4, 16\)"):
            GalleryIndex.load(path)
    meta["factory"] = "IVF4,PQ4,Refine(Flat)"
    write_header(path, dict(meta), data=bytes(data))
    with pytest.raises(IndexFormatError, match="unsupported kind in its header"):
        GalleryIndex.load(path)


def test_missing_fingerprint_is_a_mismatch(tmp_path, saved, write_header) -> None:
    path, meta, _ = saved()
    meta["fingerprint"] = None
    write_header(path, meta, rehash=False)
    with pytest.raises(IndexFormatError, match="checksum"):
        GalleryIndex.load(path)
    write_header(path, meta)  # someone also recomputed the checksum
    with pytest.raises(ValueError, match="built with None, expected 'enc-A'"):
        GalleryIndex.load(path, expected_fingerprint="enc-A")
    loaded = GalleryIndex.load(path)
    with pytest.raises(ValueError, match="records no encoder fingerprint"):
        loaded.search(np.ones((1, DIM)), 1, fingerprint="enc-B")
    with pytest.raises(ValueError, match="records no encoder fingerprint"):
        loaded.add(np.ones((1, DIM)), [99], fingerprint="enc-B")


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_saved_files_respect_the_umask(tmp_path, mask) -> None:
    from uit_reid.checkpoint import save_checkpoint

    old = os.umask(mask)
    try:
        _index(3).save(tmp_path / "g.faiss")
        save_checkpoint(tmp_path / "last.pt", step=1)
    finally:
        os.umask(old)
    for name in ("g.faiss", "last.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
