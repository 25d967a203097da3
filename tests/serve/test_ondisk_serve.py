"""`uit-reid serve` over an on-disk index: start-up maps the lists and ids instead of reading them.

Three real server processes on one model: over a 300,000-vector on-disk index, over the same index
as one file read into memory (``--no-mmap``), and over the tiny test gallery (the baseline). The
on-disk server's resident memory stays near the baseline's, far below what its lists and ids
weigh, while the in-memory one grows by about that much (so the measurement does see a loaded
gallery); both answer every query identically.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest
from conftest import start_server

from uit_reid.retrieval import GalleryIndex
from uit_reid.retrieval.distributed_build import merge_parts
from uit_reid.retrieval.ondisk import side_files

EXTRA = 300_000
QUERIES = ["a man in a red jacket", "a woman with a black bag", "a person in blue jeans and a white shirt"]


def _rss(pid: int) -> int:
    """Resident bytes of process ``pid`` (its VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def big(gallery) -> dict[str, Path]:
    """The test gallery's real vectors then EXTRA random ones, as an on-disk index (merged from two parts)
    and as one in-memory index file with the same lists."""
    small = GalleryIndex.load(gallery["index"])
    real = faiss.downcast_index(small._index.index).reconstruct_n(0, len(small))
    rng = np.random.default_rng(0)
    x = np.concatenate([real, rng.standard_normal((EXTRA, small.dim)).astype(np.float32)])
    ids = [*small.ids(), *(f"missing/{i:07d}.jpg" for i in range(EXTRA))]
    base = gallery["base"] / "ondisk"
    trained = GalleryIndex(small.dim, "IVF64,Flat", fingerprint=small.fingerprint)
    trained.train(x[::10])
    trained.save(base / "trained.index")
    halves = []
    for name, rows in (("a", slice(0, EXTRA // 2)), ("b", slice(EXTRA // 2, None))):
        part = GalleryIndex.load(base / "trained.index")
        part.add(x[rows], ids[rows])
        part.save(base / f"{name}.index")
        halves.append(base / f"{name}.index")
    merge_parts(halves, base / "disk.index", metadata=small.metadata, progress=False)
    whole = GalleryIndex.load(base / "trained.index")
    whole.add(x, ids)
    whole.metadata = small.metadata
    whole.save(base / "memory.index")
    return {"disk": base / "disk.index", "memory": base / "memory.index"}


def _answers(server) -> list:
    out = []
    for query in QUERIES:
        r = httpx.get(server.url + "/search", params={"q": query, "k": 10}, timeout=60)
        assert r.status_code == 200, r.text
        out.append([(h["id"], round(h["score"], 5)) for h in r.json()["results"][0]["results"]])
    return out


def test_serving_an_on_disk_index_maps_it_and_answers_as_the_in_memory_index(gallery, big) -> None:
    weight = sum(p.stat().st_size for p in side_files(big["disk"]))  # lists + ids
    servers = {
        "baseline": start_server(gallery, "baseline-rss"),
        "disk": start_server({**gallery, "index": big["disk"]}, "disk"),
        "memory": start_server({**gallery, "index": big["memory"]}, "memory", "--no-mmap"),
    }
    try:
        started = {name: _rss(s.proc.pid) for name, s in servers.items()}
        print(f"RSS at start-up (MB): { {k: round(v / 1e6) for k, v in started.items()} }, lists + ids {weight / 1e6:.0f} MB")
        assert servers["disk"].get_json("/stats")["index_mmap"] is True
        answers = _answers(servers["disk"])
        assert answers == _answers(servers["memory"])
        served = _rss(servers["disk"].proc.pid)
    finally:
        for s in servers.values():
            s.stop()
    assert weight > 60e6
    assert started["memory"] - started["baseline"] > 0.6 * weight, (started, weight)  # reading it is visible ...
    assert started["disk"] - started["baseline"] < 0.15 * weight, (started, weight)  # ... mapping it is not
    assert served - started["baseline"] < 0.5 * weight, (served, started, weight)  # 3 queries touch a few lists
