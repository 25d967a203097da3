"""`IdMap`: compact slot <-> id arrays, checked against a plain Python dict and list."""

from __future__ import annotations

import tracemalloc
from unittest.mock import patch

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.retrieval import GalleryIndex, idmap
from uit_reid.retrieval.idmap import IdMap, hash_strings

_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from("é/\ud800"), max_size=12)


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(_TEXT, unique=True, max_size=60), split=st.integers(0, 100), gone=st.sets(st.integers(0, 59)),
       probes=st.lists(_TEXT, max_size=8))
def test_string_ids_match_a_dict(ids, split, gone, probes) -> None:
    m = IdMap()
    cut = len(ids) * split // 100
    m.append(ids[:cut], "str")
    m.slots_of(ids[:1])  # builds the table, which the next append must extend
    m.append(ids[cut:], "str")
    assert m.slots_of(ids).tolist() == list(range(len(ids)))  # the extended table, before remove resets it
    removed = sorted(s for s in gone if s < len(ids))
    m.remove_slots(np.array(removed, dtype=np.int64))
    expected = {v: s for s, v in enumerate(ids) if s not in removed}
    for current in (m, IdMap.from_buffer(m.to_bytes(), len(ids), m.id_type)):
        assert current.ids() == list(expected)
        assert len(current) == len(expected) and current.num_slots == len(ids)
        asked = ids + probes
        assert current.slots_of(asked).tolist() == [expected.get(v, -1) for v in asked]
        table = current.ids_at(np.arange(-1, len(ids)))
        none = None if current.id_type == "str" else -1  # a map with no id yet answers like an int map
        assert table.tolist() == [none] + [None if s in removed else v for s, v in enumerate(ids)]


@settings(max_examples=30, deadline=None)
@given(ids=st.lists(st.integers(-(2**63), 2**63 - 1).filter(lambda v: v != -1), unique=True, max_size=40),
       probes=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5))
def test_int_ids_match_a_dict(ids, probes) -> None:
    m = IdMap()
    m.append(ids, "int")
    loaded = IdMap.from_buffer(m.to_bytes(), len(ids), m.id_type)
    expected = {v: s for s, v in enumerate(ids)}
    assert loaded.ids() == ids
    assert loaded.slots_of(ids + probes).tolist() == [expected.get(v, -1) for v in ids + probes]
    assert loaded.ids_at(np.array([-1, *range(len(ids))])).tolist() == [-1, *ids]


def _reference_key(data: bytes) -> int:
    """The documented key of one string, in plain Python integers (independent of the vectorised code)."""
    mod, prime, mix0, mix1 = 2**64, 0x100000001B3, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53
    padded = data + bytes(-len(data) % 8)
    h = 0
    for j in range(len(padded) // 8):
        w = int.from_bytes(padded[8 * j : 8 * j + 8], "little") * mix1 % mod
        w ^= w >> 31
        h = (h + w * pow(prime, j, mod)) % mod
    h ^= len(data) * mix0 % mod
    for mix in (mix0, mix1, None):
        h ^= h >> 33
        if mix is not None:
            h = h * mix % mod
    return h


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.binary(max_size=40) | st.sampled_from([b"", b"a" * 8, b"a" * 9, b"img/000000001.jpg"]),
                      max_size=30),
       big=st.integers(0, 3))
def test_string_keys_are_the_documented_hash(texts, big) -> None:
    """Keys equal a per-string computation, wherever the string sits in the blob and whatever its neighbours."""
    texts = texts + [bytes(range(256)) * big]  # a long id (many words)
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum([len(t) for t in texts], out=offsets[1:])
    expected = [_reference_key(t) for t in texts]
    for chunk in (idmap._HASH_CHUNK_BYTES, 16):  # also one id per vectorised pass
        with patch.object(idmap, "_HASH_CHUNK_BYTES", chunk):
            keys = hash_strings(np.frombuffer(b"".join(texts), np.uint8), offsets)
        assert keys.tolist() == expected


def test_load_holds_no_python_object_per_id(tmp_path) -> None:
    """A loaded index keeps its ids as arrays: far less memory than one str per id plus a dict."""
    n = 20000
    index = GalleryIndex(8, "flat")
    index.add(np.random.default_rng(0).standard_normal((n, 8)), [f"cam{i % 7}/frame_{i:08d}.jpg" for i in range(n)])
    path = tmp_path / "g.faiss"
    index.save(path)
    del index
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    loaded = GalleryIndex.load(path)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    as_objects = n * (49 + 24) + n * 100  # one str per id (~73 bytes here) and a dict entry each, at least
    assert len(loaded) == n and held < as_objects / 2, (held, as_objects)
    assert loaded.ids_at(np.array([3, n - 1])).tolist() == ["cam3/frame_00000003.jpg", f"cam{(n - 1) % 7}/frame_{n - 1:08d}.jpg"]
