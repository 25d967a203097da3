"""On-disk IVF indexes: built by torchrun ranks into parts, merged on disk, mapped when loaded.

Real processes throughout: the CLI in-process for one rank, ``torchrun`` with two gloo ranks, and two
rank processes SIGKILLed mid-build. The reference is always the in-memory index of the same vectors
(`build_index_from_shards`), searched and compared list by list.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from uit_reid.cli import main
from uit_reid.retrieval import (
    EmbeddingShards,
    GalleryIndex,
    IndexFormatError,
    ShardVectors,
    build_index_from_shards,
)
from uit_reid.retrieval.distributed_build import build_ondisk_index, parts_folder
from uit_reid.retrieval.idmap import IdMap, IdMapError, write_ids_file
from uit_reid.retrieval.ondisk import ivf_of, side_files
from uit_reid.retrieval.shards import write_shard

DIM = 24
ROOT = Path(__file__).resolve().parents[2]
KINDS = ["IVF16,PQ8", "IVF16,Flat"]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def emb(tmp_path_factory) -> dict:
    """Five shards (the last one short) of clustered float16 unit vectors, and queries."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((30, DIM))
    folder = tmp_path_factory.mktemp("ondisk") / "emb"
    for s, rows in enumerate([600, 600, 600, 600, 250]):
        x = centres[rng.integers(0, 30, rows)] + 0.4 * rng.standard_normal((rows, DIM))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        write_shard(folder, s, x.astype(np.float16), [f"gallery/{s}/{i:04d}.jpg" for i in range(rows)])
    queries = centres[rng.integers(0, 30, 40)] + 0.4 * rng.standard_normal((40, DIM))
    return {"folder": folder, "queries": queries.astype(np.float32)}


def _lists(index: GalleryIndex) -> list[tuple[bytes, bytes]]:
    """Every inverted list's codes and labels, as bytes (what 'identical lists' compares)."""
    ivf = ivf_of(index._index)
    out = []
    for list_no in range(ivf.nlist):
        n = ivf.invlists.list_size(list_no)
        codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(list_no), n * ivf.code_size).tobytes() if n else b""
        labels = faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), n).tobytes() if n else b""
        out.append((codes, labels))
    return out


def _files(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in (out, *side_files(out))]


def _cli_build(emb: dict, out: Path, kind: str = "IVF16,PQ8") -> list[str]:
    return ["index", "build", "--embeddings", str(emb["folder"]), "--kind", kind, "--out", str(out), "--on-disk"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_merged_on_disk_index_answers_as_an_in_memory_build(emb, tmp_path, kind) -> None:
    shards = EmbeddingShards(emb["folder"])
    memory = build_index_from_shards(shards, kind, progress=False)
    out = tmp_path / "g.index"
    build_ondisk_index(shards, kind, out, progress=False)
    assert not parts_folder(out).exists()  # the parts are gone once merged
    disk = GalleryIndex.load(out)  # an on-disk index is mapped even without mmap=True
    assert disk.read_only and len(disk) == len(memory) == len(shards)
    assert _lists(disk) == _lists(memory)
    answers = []
    for nprobe, positions in ((1, False), (8, False), (8, True), (16, False)):
        disk.nprobe = memory.nprobe = nprobe
        got = disk.search(emb["queries"], k=300, positions=positions)
        want = memory.search(emb["queries"], k=300, positions=positions)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
        answers.append(got[1])
    assert not np.array_equal(answers[0], answers[1])  # nprobe reaches the mapped lists
    rerank = ShardVectors(disk)  # the embedding folder is recorded: exact re-ranking works from disk too
    got = disk.search(emb["queries"], k=5, rerank=rerank, candidates=50)
    want = memory.search(emb["queries"], k=5, rerank=ShardVectors(memory), candidates=50)
    np.testing.assert_array_equal(got[1], want[1])
    assert "gallery/4/0249.jpg" in disk and "gallery/4/0250.jpg" not in disk
    assert disk.ids_at(np.array([0, 600, 2649])).tolist() == ["gallery/0/0000.jpg", "gallery/1/0000.jpg",
                                                              "gallery/4/0249.jpg"]
    with pytest.raises(ValueError, match="cannot add: this is an on-disk index"):
        disk.add(emb["queries"][:1], ["new.jpg"])


def test_two_gloo_ranks_build_the_same_files_as_one_process(emb, tmp_path, capsys) -> None:
    one, two = tmp_path / "one" / "g.index", tmp_path / "two" / "g.index"
    assert main(_cli_build(emb, one)) == 0
    assert "indexed 2650 vectors" in capsys.readouterr().out
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "uit_reid.cli", *_cli_build(emb, two)],
                          env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("indexed 2650 vectors") == 1  # rank 0 only
    assert "rank 1/2: part 1/1: 1200 vectors of 2 shards" in proc.stderr  # rank 1 built its part: shards 1 and 3
    assert _files(two) == _files(one)  # the same lists, ids and header, byte for byte


def _rank_command(emb: dict, out: Path, rank: int, port: int) -> tuple[list[str], dict[str, str]]:
    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
           "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    return [sys.executable, "-m", "uit_reid.cli", *_cli_build(emb, out)], env


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def test_a_sigkilled_rank_is_rebuilt_on_rerun_and_the_finished_part_kept(emb, tmp_path) -> None:
    """Kill rank 1 as soon as the quantizer is shared, rank 0 once its part is complete; rerun: same files."""
    from uit_reid.serve.process import free_port

    reference = tmp_path / "ref" / "g.index"
    assert main(_cli_build(emb, reference)) == 0
    out = tmp_path / "killed" / "g.index"
    work = parts_folder(out)
    part0, part1 = (work / f"part-0000{r}-of-00002-00000.json" for r in (0, 1))
    for _attempt in range(3):  # rank 1 may (rarely) finish its part before the kill lands: try again
        shutil.rmtree(work, ignore_errors=True)
        port = free_port()
        procs = []
        for rank in (0, 1):
            command, env = _rank_command(emb, out, rank, port)
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          cwd=tmp_path))
        _wait_for(work / "trained.index", procs[0])
        procs[1].send_signal(signal.SIGKILL)
        _wait_for(part0, procs[0])
        procs[0].send_signal(signal.SIGKILL)
        for proc in procs:
            proc.wait()
        # rank 1 is killed; rank 0 is killed too, unless it has already stopped at the next barrier on its
        # own (gloo sees the dead peer): either way its part is complete and rank 1's is not
        assert procs[1].returncode == -signal.SIGKILL and procs[0].returncode in (-signal.SIGKILL, 1)
        if part0.exists() and not part1.exists():
            break
    assert part0.exists() and not part1.exists() and not out.exists()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "uit_reid.cli", *_cli_build(emb, out)],
                          env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"rank 0/2: part 1/1 {work / 'part-00000-of-00002-00000.index'} is complete, kept" in proc.stderr
    assert "rank 1/2: part 1/1: 1200 vectors of 2 shards" in proc.stderr  # the killed rank's part, rebuilt
    assert _files(out) == _files(reference)


def test_index_merge_joins_parts_built_apart_and_refuses_what_does_not_fit(emb, tmp_path, capsys) -> None:
    """Parts extended from one trained file on 'separate machines' merge into the index of all their vectors."""
    shards = EmbeddingShards(emb["folder"])
    x = np.concatenate([np.asarray(v, np.float32) for v, _ in shards])
    ids = [i for _, chunk in shards for i in chunk]
    trained = GalleryIndex(DIM, "IVF16,PQ8")
    trained.train(x)
    trained.save(tmp_path / "trained.index")
    paths = []
    for name, rows in (("a", slice(0, 1000)), ("b", slice(1000, None))):
        part = GalleryIndex.load(tmp_path / "trained.index")
        part.add(x[rows], ids[rows])
        part.save(tmp_path / f"{name}.index")
        paths.append(str(tmp_path / f"{name}.index"))
    whole = GalleryIndex.load(tmp_path / "trained.index")
    whole.add(x, ids)
    assert main(["index", "merge", *paths, "--out", str(tmp_path / "m.index")]) == 0
    assert "merged 2 parts on disk" in capsys.readouterr().out
    merged = GalleryIndex.load(tmp_path / "m.index", mmap=True)
    assert _lists(merged) == _lists(whole)
    np.testing.assert_array_equal(merged.search(emb["queries"], 10)[1], whole.search(emb["queries"], 10)[1])

    other = GalleryIndex(DIM, "IVF16,PQ8", seed=1)  # trained apart: another quantizer
    other.add(x[:1000], [f"o{i}" for i in range(1000)])
    other.save(tmp_path / "other.index")
    again = GalleryIndex.load(tmp_path / "trained.index")
    again.add(x[:10], ids[999:1009])  # id 999 is in part a as well
    again.save(tmp_path / "again.index")
    cases = [
        ([paths[0], str(tmp_path / "other.index")], f"part {tmp_path / 'other.index'} was trained apart from part "
                                                    f"{paths[0]}"),
        ([paths[0], str(tmp_path / "again.index")], f"the id 'gallery/1/0399.jpg' is in part {paths[0]} and in part "
                                                    f"{tmp_path / 'again.index'}"),
    ]
    for parts, message in cases:
        assert main(["index", "merge", *parts, "--out", str(tmp_path / "bad.index")]) == 1
        assert f"uit-reid: error: {message}" in capsys.readouterr().err
        assert not (tmp_path / "bad.index").exists()


def test_a_damaged_side_file_is_refused_by_name(emb, tmp_path) -> None:
    out = tmp_path / "g.index"
    build_ondisk_index(EmbeddingShards(emb["folder"]), "IVF16,Flat", out, progress=False)
    ivfdata, ids = side_files(out)
    saved = ivfdata.read_bytes()
    ivfdata.write_bytes(saved[:-8])
    with pytest.raises(IndexFormatError, match=f"index file {out}: {ivfdata} holds {len(saved) - 8} bytes"):
        GalleryIndex.load(out)
    ivfdata.write_bytes(saved)
    ids.write_bytes(b"not an id file")
    with pytest.raises(IndexFormatError, match=f"{ids} is not an id file of an on-disk index"):
        GalleryIndex.load(out)
    ids.unlink()
    with pytest.raises(FileNotFoundError, match=f"no id file at {ids}"):
        GalleryIndex.load(out)
    with pytest.raises(ValueError, match="an on-disk index needs an IVF kind"):
        build_ondisk_index(EmbeddingShards(emb["folder"]), "flat", tmp_path / "f.index", progress=False)


def test_an_id_file_maps_ids_and_keys_without_reading_them(tmp_path) -> None:
    """`write_ids_file` + `IdMap.open_file` give the same lookups as the in-memory map, for both id types."""
    for values in (["b/ä.jpg", "a.jpg", "", "c" * 300, "d.jpg"], [7, -3, 2**62, 0, 11]):
        kind = "str" if isinstance(values[0], str) else "int"
        whole = IdMap()
        whole.append(values, kind)
        first, second = IdMap(), IdMap()
        first.append(values[:2], kind)
        second.append(values[2:], kind)
        path = tmp_path / f"{kind}.ids"
        write_ids_file(path, [(first, 0, 2, "first"), (second, 0, 3, "second")])
        mapped = IdMap.open_file(path)
        assert isinstance(mapped._keys, np.memmap) and len(mapped) == 5 and mapped.num_slots == 5
        assert mapped.ids() == values
        probe = [*values[::-1], "zzz" if kind == "str" else 99]
        np.testing.assert_array_equal(mapped.slots_of(probe), whole.slots_of(probe))
        assert mapped.slots_of(probe).tolist() == [4, 3, 2, 1, 0, -1]
    assert json.loads(path.read_bytes()[16:].split(b"}}")[0] + b"}}")["slots"] == 5


def _threaded_build(
    shards: EmbeddingShards, out: Path, world: int, part_vectors: int | None = None, stop_before_merge: bool = False
) -> None:
    """``world`` ranks as threads of this process, synchronised by a real barrier (the library's hook);
    ``stop_before_merge``: every rank stops at the barrier before the merge (its parts are written)."""
    import threading

    barrier = threading.Barrier(world)
    errors: list[BaseException] = []
    calls = [0] * world

    class Stop(Exception):
        pass

    def rank(r: int) -> None:
        def wait() -> None:
            barrier.wait()
            calls[r] += 1
            if stop_before_merge and calls[r] == 2:
                raise Stop

        try:
            build_ondisk_index(shards, "IVF16,PQ8", out, rank=r, world_size=world, barrier=wait,
                               part_vectors=part_vectors, progress=False)
        except Stop:
            pass
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_any_world_size_writes_the_same_files_even_with_ranks_left_without_shards(emb, tmp_path) -> None:
    shards = EmbeddingShards(emb["folder"])
    reference = tmp_path / "w1" / "g.index"
    build_ondisk_index(shards, "IVF16,PQ8", reference, progress=False)
    for world, part_vectors in ((3, None), (7, None), (2, 250), (3, 1)):  # 7 ranks for 5 shards: 5 and 6 idle
        out = tmp_path / f"w{world}-{part_vectors}" / "g.index"
        _threaded_build(shards, out, world, part_vectors)
        assert _files(out) == _files(reference), (world, part_vectors)


def test_a_rank_writes_a_part_whenever_it_holds_part_vectors(emb, tmp_path, caplog) -> None:
    """Parts of 250 vectors (shards of 600 straddle them) and their records; a rerun with another part size
    drops the old parts and writes the same index."""
    shards = EmbeddingShards(emb["folder"])
    out = tmp_path / "g.index"
    caplog.set_level(logging.INFO, logger="uit_reid.retrieval.distributed_build")
    with caplog.at_level(logging.INFO):
        build_ondisk_index(shards, "IVF16,PQ8", out, part_vectors=250, progress=False)
    made = [r.getMessage() for r in caplog.records if "vectors of" in r.getMessage()]
    assert len(made) == 11 and made[0].startswith("rank 0/1: part 1/11: 250 vectors of 1 shards")
    assert made[2].startswith("rank 0/1: part 3/11: 250 vectors of 2 shards")  # rows 500-599 of shard 0, 0-149 of 1
    assert made[-1].startswith("rank 0/1: part 11/11: 150 vectors of 1 shards")
    reference = _files(out)
    work = parts_folder(out)
    _threaded_build(shards, out, 2, 1000, stop_before_merge=True)
    kept = sorted(p.name for p in work.glob("part-*.json"))
    assert kept == ["part-00000-of-00002-00000.json", "part-00000-of-00002-00001.json", "part-00001-of-00002-00000.json",
                    "part-00001-of-00002-00001.json"]
    _threaded_build(shards, out, 2, 700)  # other part size: every old part is dropped, the index is the same
    assert _files(out) == reference and not work.exists()


@given(rows=st.lists(st.integers(0, 50), min_size=1, max_size=12), world=st.integers(1, 5), size=st.integers(1, 60))
def test_the_pieces_of_all_ranks_tile_every_row_once(rows, world, size) -> None:
    from uit_reid.retrieval.distributed_build import _pieces

    seen = []
    for rank in range(world):
        flat = [r for piece in _pieces(rows, rank, world, size) for r in piece]
        for piece in _pieces(rows, rank, world, size):
            assert 0 < sum(b - a for _, a, b in piece) <= size
        assert all(n % world == rank and 0 <= a < b <= rows[n] for n, a, b in flat)
        assert flat == sorted(flat)  # a rank's rows in shard order
        seen += [(n, i) for n, a, b in flat for i in range(a, b)]
    assert sorted(seen) == [(n, i) for n, r in enumerate(rows) for i in range(r)]


def test_the_key_tables_merge_in_small_batches_as_in_one(tmp_path, monkeypatch) -> None:
    """`write_ids_file`'s k-way merge of sorted key tables, forced into batches of 7 rows, writes the same file."""
    from uit_reid.retrieval import idmap

    rng = np.random.default_rng(5)
    maps = []
    for n in (40, 0, 25, 61):
        m = IdMap()
        if n:
            m.append([f"cam{rng.integers(0, 9)}/{len(maps)}-{i}-{'x' * int(rng.integers(0, 20))}.jpg" for i in range(n)],
                     "str")
        maps.append(m)
    pieces = [(m, 0, m.num_slots, f"p{i}") for i, m in enumerate(maps)]
    write_ids_file(tmp_path / "one.ids", pieces)
    monkeypatch.setattr(idmap, "_MERGE_ROWS", 7)
    write_ids_file(tmp_path / "small.ids", pieces)
    assert (tmp_path / "small.ids").read_bytes() == (tmp_path / "one.ids").read_bytes()
    mapped = IdMap.open_file(tmp_path / "small.ids")
    assert np.all(np.diff(mapped._keys.astype(np.uint64)) >= 0)
    every = [i for m in maps for i in m.ids()]
    assert mapped.slots_of(every).tolist() == list(range(len(every)))
    maps[2].append([maps[0].ids()[3]], "str")  # now one id is in p0 and p2
    with pytest.raises(IdMapError, match=f"the id {maps[0].ids()[3]!r} is in p0 and in p2"):
        write_ids_file(tmp_path / "bad.ids", [(m, 0, m.num_slots, f"p{i}") for i, m in enumerate(maps)])


def test_on_disk_build_refusals_name_the_argument(emb, tmp_path, capsys) -> None:
    out = str(tmp_path / "g.index")
    cases = [
        (["--images", str(tmp_path), "--model", "m", "--out", out, "--on-disk"],
         "--on-disk works with --embeddings (encode the images with 'uit-reid encode' first)"),
        (["--embeddings", str(emb["folder"]), "--kind", "HNSW32,Flat", "--out", out, "--on-disk"],
         "an on-disk index needs an IVF kind (ivf, IVF<n>,Flat, IVF<n>,PQ<m>, ...), got 'HNSW32,Flat'"),
    ]
    for args, message in cases:
        assert main(["index", "build", *args]) == 1
        assert capsys.readouterr().err == f"uit-reid: error: {message}\n"
    assert not any(tmp_path.iterdir())  # nothing written
