"""Helpers for reading and editing saved GalleryIndex files as a user (or an attacker) would."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest


def _read_header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 8)
    return json.loads(raw[16 : 16 + n])


def _parts(path):
    """(header, binary id map, FAISS bytes) of a saved index."""
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 8)
    meta = json.loads(raw[16 : 16 + n])
    id_map = raw[16 + n : 16 + n + meta["id_map_bytes"]]
    return meta, id_map, raw[16 + n + meta["id_map_bytes"] :]


def _write_header(path, meta, *, rehash=True, data=None, id_map=None):
    """Rewrite the JSON header (and optionally the id map or FAISS bytes) of a saved index, checksums recomputed."""
    _, old_map, old_data = _parts(path)
    data = old_data if data is None else data
    id_map = old_map if id_map is None else id_map
    if rehash:
        meta["index_bytes"], meta["index_sha256"] = len(data), hashlib.sha256(data).hexdigest()
        meta["id_map_bytes"], meta["id_map_sha256"] = len(id_map), hashlib.sha256(id_map).hexdigest()
        body = {k: v for k, v in meta.items() if k != "header_sha256"}
        meta["header_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    header = json.dumps(meta).encode()
    path.write_bytes(b"UITGIDX\n" + struct.pack("<Q", len(header)) + header + id_map + data)


@pytest.fixture
def parts():
    return _parts


@pytest.fixture
def read_header():
    return _read_header


@pytest.fixture
def write_header():
    return _write_header
