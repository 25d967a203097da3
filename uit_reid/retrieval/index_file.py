"""The saved form of a `GalleryIndex`: one file, written atomically, checked fully before FAISS reads it.

Layout: an 8-byte magic, a little-endian uint64 header length, a JSON header (format version, dim,
kind, factory string, parameters, normalisation, encoder fingerprint, user metadata, the byte
lengths and SHA-256 of the id map and of the FAISS bytes, and a SHA-256 of the header itself), the
binary id map (`uit_reid.retrieval.idmap.IdMap.to_bytes`) and the FAISS index bytes
(``faiss.write_index`` format, never pickle).

An *on-disk* index (`uit_reid.retrieval.ondisk`) is such a file holding the trained, empty FAISS
index and an ``ondisk`` header field naming its lists and ids files beside it, which are mapped.

`read_index_file` checks, in this order and before FAISS sees a byte: the magic and sizes, the
header checksum, the fields, the expected dimension and encoder fingerprint, the id map's checksum
and contents, the FAISS bytes' checksum and structure (`uit_reid.retrieval._faiss_check`), and that
the stored labels are exactly the live slots. The header records the FAISS version that wrote the
file: a different major version is named in one warning on load (FAISS keeps its format across
versions, mostly), and if FAISS then cannot read the bytes the error names both versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap as mmap_module
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from uit_reid._errors import EncoderMismatchError
from uit_reid.io import atomic_write_bytes
from uit_reid.retrieval._faiss_check import FaissBytesError, check_index_bytes
from uit_reid.retrieval.factory_string import Layout, parse_factory
from uit_reid.retrieval.idmap import IdMap, IdMapError
from uit_reid.retrieval.ondisk import ONDISK_FIELD, open_ondisk

__all__ = ["FORMAT_VERSION", "IndexFile", "IndexFormatError", "read_index_file", "write_index_file"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""Version of the saved index format (header ``format_version``); 3: factory strings, binary id map."""
_FORMAT_NAME = "uit_reid.GalleryIndex"
_MAGIC = b"UITGIDX\n"
_LEN = struct.Struct("<Q")
_HASH_CHUNK = 1 << 24


class IndexFormatError(ValueError):
    """A saved index is missing, truncated, corrupted or of an unknown format."""


@dataclass
class IndexFile:
    """What `read_index_file` returns: the checked header, the id map and the FAISS index."""

    meta: dict[str, Any]
    ids: IdMap
    index: Any
    layout: Layout
    mapped: bool
    """True when the FAISS index's lists are memory-mapped from the file (read-only)."""


def _stream_index(index: Any, sink: Any) -> tuple[str, int]:
    """Serialise ``index`` through ``sink(chunk)`` (FAISS's own writer, a megabyte at a time); returns
    the SHA-256 and size of the bytes, so no copy of the whole serialisation is ever held."""
    digest, size = hashlib.sha256(), 0

    def write(chunk: bytes) -> None:
        nonlocal size
        digest.update(chunk)
        size += len(chunk)
        sink(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(write))
    return digest.hexdigest(), size


def write_index_file(path: Path, fields: dict[str, Any], ids: IdMap, index: Any) -> None:
    """Write ``fields`` (the header's index-specific part), the id map and ``index`` to ``path``, atomically.

    The FAISS bytes are streamed twice, once to checksum them for the header (which comes first) and
    once into the file, and never held whole: at 10M vectors that copy was 1.6 GB of peak memory. The
    second pass must give the same checksum, or nothing is written.
    """
    index_sha256, index_bytes = _stream_index(index, lambda chunk: None)
    id_map = ids.to_parts()
    id_map_digest = hashlib.sha256()
    for part in id_map:
        id_map_digest.update(part)
    meta = {
        "format": _FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **fields,
        "id_type": ids.id_type,
        "slots": ids.num_slots,
        "id_map_bytes": sum(part.nbytes for part in id_map),
        "id_map_sha256": id_map_digest.hexdigest(),
        "index_bytes": index_bytes,
        "index_sha256": index_sha256,
        "faiss_version": faiss.__version__,
    }
    meta["header_sha256"] = _header_digest(meta)
    header = json.dumps(meta).encode("utf-8")

    def write_faiss(fh: Any) -> None:
        if _stream_index(index, fh.write) != (index_sha256, index_bytes):
            raise RuntimeError(f"{path}: FAISS serialised the index differently twice; nothing was written")

    atomic_write_bytes(path, _MAGIC + _LEN.pack(len(header)) + header, *id_map, write_faiss)


def read_index_file(
    path: Path, *, expected_dim: int | None, expected_fingerprint: str | None, mmap: bool
) -> IndexFile:
    """Read and check the index file ``path`` (module docstring); ``mmap`` maps an IVF kind's lists.

    Raises ``FileNotFoundError``, `IndexFormatError`, ``ValueError`` (dimension mismatch) or
    `EncoderMismatchError` (fingerprint mismatch).
    """
    if not path.is_file():
        raise FileNotFoundError(f"no index file at {path}")
    with open(path, "rb") as fh:
        before = os.fstat(fh.fileno())
        meta, ids, offset = _read_head(path, fh, before.st_size)
        _check_expected(path, meta, expected_dim, expected_fingerprint)
        layout = parse_factory(meta["factory"], meta["dim"])
        if meta["index_bytes"] == 0:
            raise IndexFormatError(f"index file {path} holds no FAISS bytes")
        with mmap_module.mmap(fh.fileno(), 0, access=mmap_module.ACCESS_READ) as mapped:
            view = memoryview(mapped)[offset:]
            try:
                problem, labels = _check_faiss_bytes(view, layout, meta)
            finally:
                view.release()
        if problem is not None:
            raise IndexFormatError(f"index file {path} {problem}")
        expected = np.arange(ids.num_slots) if layout.kind == "hnsw" else ids.live_slots()
        if labels.size != expected.size or not np.array_equal(np.sort(labels), expected):
            raise IndexFormatError(
                f"index file {path}: its {labels.size} stored vectors do not match the id map's "
                f"{expected.size} slots (edited or corrupted)"
            )
        ondisk = ONDISK_FIELD in meta
        mapped_lists = (mmap or ondisk) and layout.kind == "ivf"
        written_by = _faiss_version_note(path, meta)
        try:
            index = _read_faiss(path, offset, mapped_lists)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise IndexFormatError(
                f"index file {path}: FAISS {faiss.__version__} cannot read its index{written_by}: {first}"
            ) from None
        if ondisk:  # the lists and ids live beside the file and are always mapped, never read
            if layout.kind != "ivf" or ids.num_slots:
                raise IndexFormatError(f"index file {path}: only an empty IVF index can name on-disk lists")
            try:
                ids = open_ondisk(path, meta, index)
            except ValueError as err:
                raise IndexFormatError(f"index file {path}: {err}") from None
        after = os.stat(path)
        if (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
            raise IndexFormatError(f"index file {path} was replaced while it was loaded: load it again")
    return IndexFile(meta, ids, index, layout, mapped_lists)


def _faiss_version_note(path: Path, meta: dict[str, Any]) -> str:
    """Warn once when the file was written by another major FAISS version; the note errors add then."""
    saved = meta.get("faiss_version")
    if not isinstance(saved, str):
        return ""
    if saved.split(".")[0] != faiss.__version__.split(".")[0]:
        logger.warning("index file %s was written by FAISS %s, this is FAISS %s (another major version): "
                       "if it misbehaves, rebuild or re-save it", path, saved, faiss.__version__)
    return f" (written by FAISS {saved})"


def _check_expected(path: Path, meta: dict[str, Any], dim: int | None, fingerprint: str | None) -> None:
    if dim is not None and meta["dim"] != dim:
        raise ValueError(f"dimension mismatch: index at {path} has dim {meta['dim']}, expected {dim}")
    if fingerprint is not None and meta["fingerprint"] != fingerprint:
        raise EncoderMismatchError(
            f"encoder fingerprint mismatch: index at {path} was built with {meta['fingerprint']!r}, "
            f"expected {fingerprint!r}"
        )


def _read_faiss(path: Path, offset: int, mapped_lists: bool) -> Any:
    """The FAISS index from ``offset`` on (lists memory-mapped read-only when ``mapped_lists``)."""
    reader = faiss.FileIOReader(str(path))
    skip = np.empty(offset, np.uint8)
    if reader(faiss.swig_ptr(skip), 1, offset) != offset:
        raise IndexFormatError(f"index file {path} is truncated")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mapped_lists else 0
    return faiss.read_index(reader, flags)


_REQUIRED = {
    "dim": int,
    "kind": str,
    "factory": str,
    "parameters": dict,
    "fingerprint": (str, type(None)),
    "metadata": dict,
    "id_type": (str, type(None)),
    "slots": int,
    "id_map_bytes": int,
    "id_map_sha256": str,
    "index_bytes": int,
    "index_sha256": str,
    "normalization": str,
    "header_sha256": str,
}
def _header_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _sha256(data: memoryview) -> str:
    digest = hashlib.sha256()
    for start in range(0, len(data), _HASH_CHUNK):
        digest.update(data[start : start + _HASH_CHUNK])
    return digest.hexdigest()


def _check_faiss_bytes(view: memoryview, layout: Layout, meta: dict[str, Any]) -> tuple[str | None, np.ndarray]:
    """(what is wrong with the FAISS bytes or None, their labels). Returns rather than raises, so no
    traceback keeps a slice of a memory map alive after the map is closed."""
    if _sha256(view) != meta["index_sha256"]:
        return "does not match its checksum (corrupted?)", np.zeros(0, np.int64)
    try:
        return None, check_index_bytes(view, layout, meta["dim"])
    except FaissBytesError as err:
        message = f"is not a {meta['kind']} index as saved: {err}"
    return message, np.zeros(0, np.int64)


def _read_exact(fh: Any, n: int, path: Path, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise IndexFormatError(f"index file {path} is truncated: its {what} claims {n} bytes")
    return data


def _read_head(path: Path, fh: Any, size: int) -> tuple[dict[str, Any], IdMap, int]:
    """Header and id map of a saved index (all checked); returns them and the FAISS bytes' offset."""
    if _read_exact_or_short(fh, len(_MAGIC)) != _MAGIC:
        raise IndexFormatError(
            f"{path} is not a GalleryIndex file (or was saved by an older version: rebuild it)"
        )
    start = len(_MAGIC) + _LEN.size
    if size < start:
        raise IndexFormatError(f"index file {path} is truncated")
    (header_len,) = _LEN.unpack(fh.read(_LEN.size))
    if header_len > size - start:
        raise IndexFormatError(f"index file {path} is truncated: its header claims {header_len} bytes")
    try:
        meta = json.loads(_read_exact(fh, header_len, path, "header").decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"index file {path} has a header that is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT_NAME:
        raise IndexFormatError(f"{path} is not a GalleryIndex file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"{path} has format_version {version!r}; this library reads {FORMAT_VERSION}: rebuild it")
    for key, types in _REQUIRED.items():
        if key not in meta:
            raise IndexFormatError(f"index file {path}: header lacks field {key!r}")
        if not isinstance(meta[key], types) or isinstance(meta[key], bool):
            raise IndexFormatError(f"index file {path}: header field {key!r} has the wrong type")
    if meta["header_sha256"] != _header_digest(meta):
        raise IndexFormatError(f"index file {path}: its header does not match its checksum (edited or corrupted)")
    if meta["dim"] < 1 or meta["normalization"] != "l2":
        raise IndexFormatError(f"index file {path}: unsupported kind, dim or normalization in its header")
    try:
        parse_factory(meta["factory"], meta["dim"])
    except ValueError as err:
        raise IndexFormatError(f"index file {path}: unsupported kind in its header: {err}") from None
    left = size - start - header_len
    if meta["id_map_bytes"] < 0 or meta["index_bytes"] < 0 or meta["id_map_bytes"] + meta["index_bytes"] != left:
        raise IndexFormatError(
            f"index file {path} is truncated or replaced: {left} bytes after the header, the header says "
            f"{meta['id_map_bytes']} + {meta['index_bytes']}"
        )
    raw = _read_exact(fh, meta["id_map_bytes"], path, "id map")
    if hashlib.sha256(raw).hexdigest() != meta["id_map_sha256"]:
        raise IndexFormatError(f"index file {path}: its id map does not match its checksum (edited or corrupted)")
    try:
        ids = IdMap.from_buffer(raw, meta["slots"], meta["id_type"])
    except IdMapError as err:
        raise IndexFormatError(f"index file {path}: {err}") from None
    return meta, ids, start + header_len + meta["id_map_bytes"]


def _read_exact_or_short(fh: Any, n: int) -> bytes:
    return fh.read(n)
