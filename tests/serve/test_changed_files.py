"""A served index whose files change on disk (issue 29, finding 1): the service never dies and never answers
from changed bytes; it refuses with 503 naming the file, and ``/healthz`` says so.

`cp new.faiss served.faiss` or a truncation of the memory-mapped IVF index once killed `uit-reid serve`
with SIGBUS (or gave scores of 3.5e37); a moved ``--rerank`` shard folder gave a bare 500 while
``/healthz`` said ok.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.conftest import start_server
from uit_reid.cli import main
from uit_reid.serve.watched import FilesChanged, WatchedFile, WatchedFiles

QUERY = "a person in a red jacket"
TIMEOUT = 60


@pytest.fixture(scope="module")
def ivf_pair(gallery, tmp_path_factory) -> dict[str, Path]:
    """Two IVF indexes of the gallery (memory-mapped when served): the one served and another with other bytes."""
    base = tmp_path_factory.mktemp("changed")
    first, second = base / "first.faiss", base / "second.faiss"
    for out, kind in ((first, "IVF2,Flat"), (second, "IVF4,Flat")):
        assert main(["index", "build", "--model", str(gallery["model"]), "--images", str(gallery["images"]),
                     "--out", str(out), "--device", "cpu", "--kind", kind]) == 0
    return {"first": first, "second": second, "base": base}


def _search_until(url: str, stop: threading.Event, answers: list[tuple[int, dict]]) -> None:
    """A client searching in a loop until ``stop``; each answer (status, JSON) is kept (-1: no answer)."""
    with httpx.Client(timeout=TIMEOUT) as client:
        while not stop.is_set():
            try:
                r = client.get(url + "/search", params={"q": QUERY, "k": 5})
                answers.append((r.status_code, r.json()))
            except httpx.HTTPError as err:
                answers.append((-1, {"error": repr(err)}))
                time.sleep(0.05)


def _change_while_searching(srv, change, clients: int = 3) -> list[tuple[int, dict]]:
    """Search from ``clients`` threads, run ``change()`` once answers flow, search on a while, return the answers."""
    stop, answers = threading.Event(), []
    threads = [threading.Thread(target=_search_until, args=(srv.url, stop, answers)) for _ in range(clients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + TIMEOUT
    while len(answers) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    change()
    seen = len(answers)
    while len(answers) < seen + 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(TIMEOUT)
    return answers


def _check_answers(answers, expected: dict, served: Path) -> None:
    """Every answer is the loaded index's exact answer or the 503 naming the file; the later ones are 503s."""
    refusal = {"error": f"index file {served} changed on disk since the service loaded it; restart the service "
                        "to serve it"}
    assert answers, "no answers"
    for status, body in answers:
        assert (status, body) in ((200, expected), (503, refusal)), (status, body)
    assert answers[-1] == (503, refusal)


@pytest.mark.parametrize("how", ["cp", "truncate-half", "truncate-zero"])
def test_a_served_mmap_index_changed_in_place_is_refused_never_a_crash(gallery, ivf_pair, tmp_path, how) -> None:
    served = tmp_path / "served.faiss"
    shutil.copyfile(ivf_pair["first"], served)
    srv = start_server({**gallery, "index": served}, f"changed-{how}", "--rate-limit", "0")
    try:
        stats = srv.get_json("/stats")
        assert stats["index_mmap"] is True and stats["index_kind"] == "IVF2,Flat"
        with httpx.Client(timeout=TIMEOUT) as client:
            expected = client.get(srv.url + "/search", params={"q": QUERY, "k": 5}).json()
        size = served.stat().st_size

        def change() -> None:
            if how == "cp":  # cp opens the file with O_TRUNC and writes into the same inode
                subprocess.run(["cp", str(ivf_pair["second"]), str(served)], check=True, timeout=TIMEOUT)
            elif how == "truncate-half":
                os.truncate(served, size // 2)
            else:
                subprocess.run(["sh", "-c", f": > '{served}'"], check=True, timeout=TIMEOUT)

        answers = _change_while_searching(srv, change)
        assert srv.alive(), srv.log.read_text()[-3000:]
        _check_answers(answers, expected, served)
        with httpx.Client(timeout=TIMEOUT) as client:
            health = client.get(srv.url + "/healthz")
            page = client.get(srv.url + "/")  # the rest of the service still answers
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable", "index_size": stats["index_size"],
                                 "error": answers[-1][1]["error"]}
        assert page.status_code == 200
        log = srv.log.read_text()
        # the lease depends on the file system (test_a_read_lease_holds... skips without one)
        assert re.search(r"watching 1 files the index reads for changes on disk \([01] with a read lease\)", log)
        assert log.count("refusing searches:") == 1, log[-3000:]  # one line, however many requests were refused
        assert "Traceback" not in log, log[-3000:]
    finally:
        srv.stop()
    assert srv.proc.returncode in (0, -15), srv.log.read_text()[-3000:]  # stopped by us, not by SIGBUS (-7)


def test_a_served_index_replaced_by_rename_keeps_answering(gallery, ivf_pair, tmp_path) -> None:
    """An atomic replacement leaves the mapped bytes alone: the loaded index keeps answering, healthz ok."""
    served = tmp_path / "served.faiss"
    shutil.copyfile(ivf_pair["first"], served)
    srv = start_server({**gallery, "index": served}, "changed-rename")
    try:
        with httpx.Client(timeout=TIMEOUT) as client:
            expected = client.get(srv.url + "/search", params={"q": QUERY, "k": 5}).json()
            shutil.copyfile(ivf_pair["second"], tmp_path / "new.faiss")
            os.replace(tmp_path / "new.faiss", served)
            after = client.get(srv.url + "/search", params={"q": QUERY, "k": 5})
            health = client.get(srv.url + "/healthz")
        assert (after.status_code, after.json()) == (200, expected)
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        srv.stop()


def test_a_moved_rerank_shard_folder_is_a_clear_503(gallery, tmp_path) -> None:
    """``--rerank`` reads the shards on every search: a moved folder is refused by name, and healthz says so."""
    emb, index = tmp_path / "emb", tmp_path / "pq.faiss"
    assert main(["encode", "--model", str(gallery["model"]), "--images", str(gallery["images"]), "--out", str(emb),
                 "--workers", "0", "--device", "cpu"]) == 0
    assert main(["index", "build", "--embeddings", str(emb), "--kind", "IVF2,PQ4x4", "--out", str(index)]) == 0
    srv = start_server({**gallery, "index": index}, "rerank-moved", "--rerank", "100")
    try:
        with httpx.Client(timeout=TIMEOUT) as client:
            assert client.get(srv.url + "/search", params={"q": QUERY, "k": 3}).status_code == 200
            emb.rename(tmp_path / "moved")
            r = client.get(srv.url + "/search", params={"q": QUERY, "k": 3})
            health = client.get(srv.url + "/healthz")
        shard = emb / "img_emb" / "img_emb_00000.npy"
        message = f"embedding file {shard} is gone (moved or removed) since the service loaded it"
        assert (r.status_code, r.json()) == (503, {"error": message})
        assert health.status_code == 503 and health.json()["error"] == message
        assert srv.alive()
    finally:
        srv.stop()


# ------------------------------------------------------------------------- WatchedFiles in this process
def test_watched_files_refuse_a_change_before_and_after_a_read(tmp_path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 100)
    files = WatchedFiles([WatchedFile(path, "index file")])
    try:
        with files.reading():
            pass
        # changed while a read runs: the result must not be used
        with pytest.raises(FilesChanged, match="changed on disk"), files.reading(), open(path, "r+b") as fh:
            fh.write(b"y" * 200)
        with pytest.raises(FilesChanged, match=f"^index file {path} changed on disk"), files.reading():
            pytest.fail("a changed file was read")
        assert files.problem().startswith(f"index file {path} changed")
    finally:
        files.close()


def test_watched_reopened_file_replaced_by_rename_is_refused(tmp_path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((2, 2), np.float32))
    files = WatchedFiles([WatchedFile(path, "embedding file", reopened=True)])
    try:
        assert files.problem() is None
        np.save(tmp_path / "b.npy", np.ones((2, 2), np.float32))
        os.replace(tmp_path / "b.npy", path)
        assert files.problem() == f"embedding file {path} was changed or replaced since the service loaded it; restart the service"
    finally:
        files.close()


def test_a_read_that_fails_because_its_file_went_away_is_the_503_not_the_error(tmp_path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((2, 2), np.float32))
    files = WatchedFiles([WatchedFile(path, "embedding file", reopened=True)])
    with pytest.raises(FilesChanged, match=f"^embedding file {path} is gone"), files.reading():
        path.unlink()  # between the check and the read
        np.load(path, mmap_mode="r")


def test_a_read_lease_holds_a_writer_until_the_search_in_flight_is_done(tmp_path) -> None:
    """With the lease, `cp` into the file waits for the search that reads it; the next search is refused."""
    path, other = tmp_path / "a.bin", tmp_path / "b.bin"
    path.write_bytes(b"x" * 4096)
    other.write_bytes(b"y" * 100)
    files = WatchedFiles([WatchedFile(path, "index file")])
    try:
        if files.take_leases() != 1:
            pytest.skip("this file system gives no read leases")
        read_done: list[float] = []
        in_read = threading.Event()

        def search() -> None:
            with files.reading():
                in_read.set()
                time.sleep(1.0)
                read_done.append((time.monotonic(), path.read_bytes()))

        t = threading.Thread(target=search)
        t.start()
        in_read.wait(TIMEOUT)
        subprocess.run(["cp", str(other), str(path)], check=True, timeout=TIMEOUT)  # SIGIO reaches this thread
        copied = time.monotonic()
        t.join(TIMEOUT)
        assert read_done and read_done[0][1] == b"x" * 4096  # the search read the loaded bytes
        assert copied >= read_done[0][0]  # cp went on only after the search
        with pytest.raises(FilesChanged, match="changed on disk"), files.reading():
            pass
    finally:
        files.close()


def test_a_writer_that_broke_the_lease_and_holds_the_file_open_is_a_change(tmp_path) -> None:
    """After a lease break the file may not have changed yet: a writer holding it open is refused the same way."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 100)
    files = WatchedFiles([WatchedFile(path, "index file")])
    writer = None
    try:
        if files.take_leases() != 1:
            pytest.skip("this file system gives no read leases")
        code = f"import time; f = open({str(path)!r}, 'r+b'); print('open', flush=True); time.sleep(30)"
        writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert writer.stdout.readline() == b"open\n"  # this thread let go of the lease meanwhile (SIGIO)
        assert path.read_bytes() == b"x" * 100  # nothing written yet
        with pytest.raises(FilesChanged, match=f"^index file {path} changed on disk since the service loaded it"), \
                files.reading():
            pass
    finally:
        if writer is not None:
            writer.kill()
            writer.wait()
        files.close()
