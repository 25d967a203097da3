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


def _write_header(path, meta, *, rehash=True, data=None):
    """Rewrite the JSON header (and optionally the FAISS bytes) of a saved index, checksums recomputed."""
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 8)
    data = raw[16 + n :] if data is None else data
    if rehash:
        meta["index_bytes"], meta["index_sha256"] = len(data), hashlib.sha256(data).hexdigest()
        body = {k: v for k, v in meta.items() if k != "header_sha256"}
        meta["header_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    header = json.dumps(meta).encode()
    path.write_bytes(raw[:8] + struct.pack("<Q", len(header)) + header + data)


@pytest.fixture
def read_header():
    return _read_header


@pytest.fixture
def write_header():
    return _write_header
