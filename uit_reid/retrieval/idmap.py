"""IdMap: a gallery index's slot -> id map held as compact arrays, never one Python object per id.

Every vector of a `GalleryIndex` has a sequential int64 *slot*; the map gives each slot its user id
(an int64 number or a string) and a live flag (0 once removed). Storage:

- ``live``: one uint8 per slot;
- int ids: one int64 per slot;
- string ids: int64 offsets (slots + 1) into one UTF-8 blob.

So a million ids cost ~9 bytes each plus their text, and loading a saved map is a few array views of
the file (memory-mapped with ``load(..., mmap=True)``), with no Python string per id. The reverse
map (id -> slot) is a sorted array of 64-bit keys (the int id itself, or a hash of the string's
bytes, verified against the bytes on a match), built only when something asks for it (``add``,
``remove``, ``in``), so loading and serving never build it.

The binary form (`IdMap.to_bytes`) is one live byte per slot, then int64 ids or uint64 offsets and
the UTF-8 text; `IdMap.from_buffer` checks it fully (sizes, live flags, offsets, UTF-8, no id twice,
no int id -1) without creating per-id objects, so a hand-crafted file is refused at load time.

An on-disk index keeps its ids in a file of their own (`write_ids_file`, ``.ids`` beside the index):
the int64 ids or the offsets and UTF-8 text, then the *sorted* 64-bit key table and the slot of
each key, each section 8-byte aligned. `IdMap.open_file` memory-maps every section and reads none
of them, so a billion ids cost no memory until a slot or an id is asked for (every slot is live:
such a map is read-only).
"""

from __future__ import annotations

import codecs
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from uit_reid.io import atomic_write_bytes

__all__ = ["IdMap", "IdMapError", "keys_of", "write_ids_file"]

_IDS_MAGIC = b"UITIDS1\n"
_IDS_FORMAT = "uit_reid.ids"
_LEN = struct.Struct("<Q")
_COPY_BYTES = 1 << 26  # bytes copied per write when streaming an id file's sections
_MERGE_ROWS = 1 << 20  # key-table rows of all sources together per batch of `write_ids_file`'s merge
_MERGE_MIN_ROWS = 1 << 12  # ... but at least this many of each source (the batches stay few with many sources)

_PRIME = np.uint64(0x100000001B3)  # odd, so every power is invertible mod 2**64
_MIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
_HASH_CHUNK_BYTES = 1 << 20  # bytes hashed (or decoded) per vectorised pass (bounds the temporary arrays)
_DIRECT_WORDS = 32  # strings up to this many 8-byte words are hashed by reading their words in place


class IdMapError(ValueError):
    """A binary id map is malformed (the message says what is wrong, without the file's name)."""


def _finalise(h: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mix the length in and scramble the bits (murmur3's finaliser), all with uint64 wrap-around."""
    h = h ^ (lengths.astype(np.uint64) * _MIX[0])
    h ^= h >> np.uint64(33)
    h *= _MIX[0]
    h ^= h >> np.uint64(33)
    h *= _MIX[1]
    h ^= h >> np.uint64(33)
    return h


def hash_strings(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """64-bit keys of the byte strings ``blob[offsets[i]:offsets[i+1]]``, vectorised over ids of one length.

    Each string is read as little-endian 8-byte words (the last one zero-padded); each word is mixed
    on its own, the words are summed with powers of an odd constant (wrap-around uint64) and the
    length is mixed in (`_finalise`). Equal strings always get equal keys and unequal ones rarely do
    (callers compare the bytes on a key match). Ids are grouped by length (one radix sort), so a group's
    words are read straight from the blob, one gather per word: 10M path-like ids take a fraction of a
    second (docs/benchmarks.md).
    """
    n = offsets.size - 1
    out = np.zeros(n, dtype=np.uint64)
    if n <= 0:
        return out
    lengths = np.diff(offsets)
    heads = offsets[:-1]
    longest = int(lengths.max())
    if int(lengths.min()) == longest:  # the usual case (paths of one pattern): no sort needed
        groups = [np.arange(n)]
    else:
        order = np.argsort(lengths.astype(np.uint16) if longest < 1 << 16 else lengths, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1)
    for group in groups:
        length = int(lengths[group[0]])
        if length == 0:
            continue
        step = max(1, _HASH_CHUNK_BYTES // length)  # ids per vectorised pass
        for first in range(0, group.size, step):
            members = group[first : first + step]
            out[members] = _word_sums(blob, heads[members], length)
    return _finalise(out, lengths)


def _word_sums(blob: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """The `hash_strings` sum of mixed words of the strings of ``length`` bytes starting at ``starts``."""
    words = -(-length // 8)
    if words <= _DIRECT_WORDS and int(starts.max()) + 8 * words <= blob.size:
        # read each word straight from the blob (unaligned 8-byte reads), masking the bytes past the string
        unaligned = np.ndarray((blob.size - 7,), dtype="<u8", buffer=blob, strides=(1,))
        table = np.empty((words, starts.size), dtype=np.uint64)
        for j in range(words):
            table[j] = unaligned[starts + 8 * j]
        tail = length - 8 * (words - 1)
        if tail < 8:
            table[-1] &= np.uint64((1 << (8 * tail)) - 1)
    else:  # long strings, or ones whose last word would read past the blob: copy into zero-padded rows
        rows = np.zeros((starts.size, 8 * words), dtype=np.uint8)
        rows[:, :length] = np.lib.stride_tricks.sliding_window_view(blob, length)[starts]
        table = rows.view("<u8").T.astype(np.uint64)
    powers = np.ones(words, dtype=np.uint64)
    powers[1:] = np.cumprod(np.full(words - 1, _PRIME, dtype=np.uint64))
    table *= _MIX[1]
    table ^= table >> np.uint64(31)
    table *= powers[:, None]
    return table.sum(axis=0, dtype=np.uint64)


def keys_of(values: list[Any], id_type: str | None) -> tuple[np.ndarray, list[bytes] | None]:
    """(64-bit keys of ``values``, their UTF-8 bytes for string ids else None): int ids are their own key."""
    if id_type == "str":
        encoded = [v.encode("utf-8", "surrogatepass") for v in values]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), np.uint8)
        return hash_strings(blob, offsets), encoded
    return np.asarray(values, dtype=np.int64).view(np.uint64), None


class IdMap:
    """Slot -> id (and lazily id -> slot) over compact arrays; see the module docstring.

    Args:
        id_type: ``"int"``, ``"str"`` or None (no id added yet).
        live: uint8 per slot (1 live, 0 removed).
        values: int64 id per slot (int ids).
        offsets, blob: int64 offsets (slots + 1) into the uint8 UTF-8 blob (string ids).
    Arrays may be read-only views of a file; the map copies them before its first change.
    """

    def __init__(
        self,
        id_type: str | None = None,
        live: np.ndarray | None = None,
        values: np.ndarray | None = None,
        offsets: np.ndarray | None = None,
        blob: np.ndarray | None = None,
    ) -> None:
        if id_type not in ("int", "str", None):
            raise ValueError(f"id_type must be 'int', 'str' or None, got {id_type!r}")
        self.id_type = id_type
        self._live = np.zeros(0, np.uint8) if live is None else live
        self._values = np.zeros(0, np.int64) if values is None else values
        self._offsets = np.zeros(1, np.int64) if offsets is None else offsets
        self._blob_parts: list[np.ndarray] = [np.zeros(0, np.uint8) if blob is None else blob]
        self._count = int(np.count_nonzero(self._live))
        self._keys: np.ndarray | None = None  # sorted 64-bit keys of the live ids (lazy)
        self._key_slots: np.ndarray | None = None

    # -- reading ------------------------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        """Slots handed out so far, removed ones included."""
        return int(self._live.size)

    def __len__(self) -> int:
        return self._count

    def _blob(self) -> np.ndarray:
        if len(self._blob_parts) > 1:
            self._blob_parts = [np.concatenate(self._blob_parts)]
        return self._blob_parts[0]

    def live_slots(self) -> np.ndarray:
        """The live slots, ascending (int64)."""
        return np.flatnonzero(self._live).astype(np.int64)

    def dead_slots(self) -> np.ndarray:
        """The removed slots, ascending (int64)."""
        return np.flatnonzero(self._live == 0).astype(np.int64)

    def ids_at(self, slots: np.ndarray) -> np.ndarray:
        """Ids of ``slots`` (any shape; -1 or a removed slot gives -1 / None): int64 or object array."""
        slots = np.asarray(slots, dtype=np.int64)
        flat = slots.reshape(-1)
        ok = flat >= 0
        ok[ok] = self._live[flat[ok]] == 1
        if self.id_type != "str":
            out = np.full(flat.shape, -1, np.int64)
            out[ok] = self._values[flat[ok]]
            return out.reshape(slots.shape)
        blob = self._blob()
        text = np.empty(flat.shape, dtype=object)
        for n in np.flatnonzero(ok).tolist():
            s = int(flat[n])
            text[n] = codecs.decode(blob[self._offsets[s] : self._offsets[s + 1]].tobytes(), "utf-8", "surrogatepass")
        return text.reshape(slots.shape)

    def ids(self) -> list[Any]:
        """The live ids in slot order, as Python objects (one per id: for callers that want a list)."""
        return self.ids_at(self.live_slots()).tolist()

    def _live_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(64-bit keys of the live ids, their slots), in slot order."""
        slots = self.live_slots()
        if self.id_type == "str":
            return hash_strings(self._blob(), self._offsets)[slots], slots
        return self._values[slots].view(np.uint64), slots

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None or self._key_slots is None:
            keys, slots = self._live_keys()
            order = np.argsort(keys, kind="stable")
            self._keys, self._key_slots = keys[order], slots[order]
        return self._keys, self._key_slots

    def slots_of(self, keys: list[Any]) -> np.ndarray:
        """The slot of each id in ``keys`` (already of this map's type), -1 where it is not in the map."""
        out = np.full(len(keys), -1, np.int64)
        if not keys or not self._count:
            return out
        table, table_slots = self._table()
        query, encoded = keys_of(keys, self.id_type)
        lo = np.searchsorted(table, query, side="left")
        hi = np.searchsorted(table, query, side="right")
        hit = hi > lo
        if encoded is None:
            out[hit] = table_slots[lo[hit]]
            return out
        blob = self._blob()
        for n in np.flatnonzero(hit).tolist():  # a key match is a candidate: compare the bytes
            for s in table_slots[lo[n] : hi[n]].tolist():
                if blob[self._offsets[s] : self._offsets[s + 1]].tobytes() == encoded[n]:
                    out[n] = s
                    break
        return out

    def none_of(self, keys: np.ndarray) -> bool:
        """True when the 64-bit ``keys`` (`keys_of` of some ids) are all distinct and none is a live id's key.

        True proves that those ids are new and distinct; False means only that two keys are equal (a
        repeated id, or a rare hash collision): the caller then checks the ids exactly. One sort of
        the keys, no lookup table: how a stream of shards is checked before it is added.
        """
        existing = self._keys if self._keys is not None else self._live_keys()[0]
        every = np.concatenate([existing, np.asarray(keys, dtype=np.uint64)])
        every.sort()
        return not np.any(every[1:] == every[:-1])

    # -- changing -----------------------------------------------------------------------------
    def append(self, values: list[Any], id_type: str) -> int:
        """Add ``values`` (checked unique and new by the caller) at the next slots; returns the first."""
        start = self.num_slots
        if not values:
            return start
        self.id_type = id_type
        self._live = np.concatenate([self._live, np.ones(len(values), np.uint8)])
        if id_type == "str":
            encoded = [v.encode("utf-8", "surrogatepass") for v in values]
            ends = np.cumsum([len(e) for e in encoded], dtype=np.int64) + self._offsets[-1]
            self._offsets = np.concatenate([self._offsets, ends])
            self._blob_parts.append(np.frombuffer(b"".join(encoded), np.uint8))
        else:
            self._values = np.concatenate([self._values, np.asarray(values, dtype=np.int64)])
        self._count += len(values)
        if self._keys is not None and self._key_slots is not None:  # merge the new keys into the built table
            slots = np.arange(start, start + len(values), dtype=np.int64)
            keys, _ = keys_of(values, self.id_type)
            order = np.argsort(keys, kind="stable")
            at = np.searchsorted(self._keys, keys[order], side="right")
            self._keys = np.insert(self._keys, at, keys[order])
            self._key_slots = np.insert(self._key_slots, at, slots[order])
        return start

    def remove_slots(self, slots: np.ndarray) -> None:
        """Mark ``slots`` (live, distinct) removed."""
        if not self._live.flags.writeable:
            self._live = self._live.copy()
        self._live[slots] = 0
        self._count -= int(slots.size)
        self._keys = self._key_slots = None

    # -- binary form ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The binary form saved in an index file (module docstring)."""
        return b"".join(self.to_parts())

    def to_parts(self) -> list[memoryview]:
        """`to_bytes` as consecutive byte views, of the map's own arrays where possible, so a save streams
        them without copying the map (10M string ids: the copies were ~0.25 GB of the save's peak)."""
        live = self._live.astype(np.uint8, copy=False)
        if self.id_type == "str":
            lengths = np.diff(self._offsets)
            if self._live.all():
                offsets = self._offsets.astype("<i8", copy=False).view("<u8")  # offsets are >= 0
                texts = [part for part in self._blob_parts if part.size]
            else:  # removed ids keep no text
                texts = [self._blob()[np.repeat(self._live.astype(bool), lengths)]]
                lengths = np.where(self._live == 1, lengths, 0)
                offsets = np.zeros(self.num_slots + 1, dtype="<u8")
                np.cumsum(lengths, out=offsets[1:])
            parts = [live, offsets, *texts]
        else:
            parts = [live, np.where(self._live == 1, self._values, 0).astype("<i8", copy=False)]
        return [memoryview(np.ascontiguousarray(part)).cast("B") for part in parts]

    @classmethod
    def from_buffer(cls, raw: Any, slots: int, id_type: str | None) -> IdMap:
        """Parse and check a binary id map held in ``raw`` (bytes or a memory map: viewed, not copied).

        Raises `IdMapError` naming what is wrong.
        """
        if id_type not in ("int", "str", None):
            raise IdMapError(f"unknown id_type {id_type!r}")
        size = len(raw)
        if slots < 0 or size < slots:
            raise IdMapError(f"the id map is shorter than its {slots} slots")
        live = np.frombuffer(raw, dtype=np.uint8, count=slots)
        if ((live != 1) & (live != 0)).any():
            raise IdMapError("the id map's live flags are not 0 or 1")
        alive = live.astype(bool)
        body = size - slots
        if id_type is None:
            if slots or body:
                raise IdMapError("unknown id_type None for a non-empty id map")
            return cls()
        if id_type == "int":
            if body != 8 * slots:
                raise IdMapError(f"the id map holds {body} id bytes for {slots} slots")
            values = np.frombuffer(raw, dtype="<i8", count=slots, offset=slots)
            if (values[alive] == -1).any():
                raise IdMapError("the id map holds the id -1, which means 'no result'")
            result = cls("int", live, values=values)
        else:
            if body < 8 * (slots + 1):
                raise IdMapError("the id map's string offsets are truncated")
            offsets = np.frombuffer(raw, dtype="<u8", count=slots + 1, offset=slots)
            text_start = slots + 8 * (slots + 1)
            blob = np.frombuffer(raw, dtype=np.uint8, offset=text_start)
            if offsets[-1] > np.uint64(2**62):
                raise IdMapError("the id map's string offsets are out of range")
            offsets = offsets.astype(np.int64)
            lengths = np.diff(offsets)
            if offsets[0] != 0 or (lengths < 0).any() or offsets[-1] != blob.size or (lengths[~alive] != 0).any():
                raise IdMapError("the id map's string offsets are out of range")
            _check_utf8(blob, offsets)
            result = cls("str", live, offsets=offsets, blob=blob)
        if result._has_duplicates():
            raise IdMapError("the id map names the same id twice (edited or corrupted)")
        return result

    @classmethod
    def open_file(cls, path: Path) -> IdMap:
        """The id map of an ``.ids`` file (`write_ids_file`), every section memory-mapped, none read.

        Checks the magic, the header and that each section has the size the slot count gives (the
        contents were checked when the file was written). Raises `IdMapError` naming the file.
        """
        header, start = _read_ids_header(path)
        slots, id_type, sections = header["slots"], header["id_type"], header["sections"]
        size = path.stat().st_size

        def section(name: str, dtype: str, count: int) -> np.ndarray:
            begin, nbytes = sections.get(name, (None, None))
            if not isinstance(begin, int) or not isinstance(nbytes, int) or begin < start or begin % 8 \
                    or nbytes != count * np.dtype(dtype).itemsize or begin + nbytes > size:
                raise IdMapError(f"id file {path}: its {name} section is missing, misplaced or truncated")
            return np.memmap(path, dtype=dtype, mode="r", offset=begin, shape=(count,)) if count else np.zeros(0, dtype)

        keys, key_slots = section("keys", "<u8", slots), section("key_slots", "<i8", slots)
        if id_type == "int":
            result = cls("int", values=section("values", "<i8", slots))
        else:
            offsets = section("offsets", "<i8", slots + 1)
            text = int(offsets[-1])
            if int(offsets[0]) != 0 or text < 0:
                raise IdMapError(f"id file {path}: its offsets section is out of range")
            result = cls("str", offsets=offsets, blob=section("blob", "u1", text))
        result._live = np.broadcast_to(np.uint8(1), (slots,))  # every slot live, and no byte per slot held
        result._count = slots
        result._keys, result._key_slots = keys, key_slots
        return result

    def _has_duplicates(self) -> bool:
        # A plain sort of the keys finds whether any two are equal far faster than the stable argsort
        # of the lookup table (10M keys: 0.3 s against 4.1 s), built only if keys collide or ids are looked up.
        if self._keys is None and self.none_of(np.zeros(0, np.uint64)):
            return False
        keys, slots = self._table()
        same = np.flatnonzero(keys[1:] == keys[:-1])
        if not same.size:
            return False
        if self.id_type != "str":
            return True
        blob = self._blob()
        group_starts = np.unique(np.searchsorted(keys, keys[same], side="left"))
        for g in group_starts.tolist():  # equal keys: compare the bytes of that group
            members = slots[g : int(np.searchsorted(keys, keys[g], side="right"))].tolist()
            texts = sorted(blob[self._offsets[s] : self._offsets[s + 1]].tobytes() for s in members)
            if any(a == b for a, b in zip(texts, texts[1:])):
                return True
        return False


def _check_utf8(blob: np.ndarray, offsets: np.ndarray) -> None:
    """Refuse ids that are not UTF-8 (surrogates allowed, as ``save`` writes them), without one object per id.

    The whole blob must decode (in chunks), and no id may start inside a character (on a
    continuation byte 0b10xxxxxx): then every id decodes on its own.
    """
    heads = offsets[:-1][np.diff(offsets) > 0]
    if heads.size and ((blob[heads] & 0xC0) == 0x80).any():
        raise IdMapError("the id map holds ids that are not str ids (invalid UTF-8)")
    decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
    try:
        for start in range(0, blob.size, _HASH_CHUNK_BYTES):
            decoder.decode(blob[start : start + _HASH_CHUNK_BYTES].tobytes())
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise IdMapError("the id map holds ids that are not str ids (invalid UTF-8)") from None


def _read_ids_header(path: Path) -> tuple[dict[str, Any], int]:
    """(the checked JSON header of an ``.ids`` file, the offset where its sections may start)."""
    try:
        with open(path, "rb") as fh:
            magic, raw_len = fh.read(len(_IDS_MAGIC)), fh.read(_LEN.size)
            if magic != _IDS_MAGIC or len(raw_len) != _LEN.size:
                raise IdMapError(f"{path} is not an id file of an on-disk index")
            (length,) = _LEN.unpack(raw_len)
            raw = fh.read(min(length, 1 << 20))
    except FileNotFoundError:
        raise FileNotFoundError(f"no id file at {path} (an on-disk index keeps its ids beside it)") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != _IDS_FORMAT or header.get("format_version") != 1 \
            or header.get("id_type") not in ("int", "str") or not isinstance(header.get("slots"), int) \
            or isinstance(header.get("slots"), bool) or header["slots"] < 0 or not isinstance(header.get("sections"), dict):
        raise IdMapError(f"id file {path}: its header is not a version-1 id file header")
    return header, len(_IDS_MAGIC) + _LEN.size + length


def write_ids_file(
    path: Path,
    pieces: Sequence[tuple[IdMap, int, int, str]],
    sources: Sequence[tuple[IdMap, Callable[[np.ndarray], np.ndarray]]] | None = None,
) -> None:
    """Write the ids of ``pieces`` -- (map, first slot, end slot, name), in that order -- as one
    memory-mappable ``.ids`` file (module docstring), atomically.

    ``sources`` are the maps the pieces come from, each with the function that gives its slots'
    places in the new file (default: each piece is a whole map, in order). Their sorted key tables
    (read from an ``.ids`` file, or built) are merged a bounded chunk at a time, never all at once, and
    the text is streamed piece by piece, so the memory the write takes does not grow with the ids'
    number. An id given twice is refused with `IdMapError` naming it and both pieces' names.
    """
    types = {m.id_type for m, a, b, _ in pieces if b > a}
    if len(types) > 1:
        raise IdMapError("the pieces mix integer and string ids: " + ", ".join(p[3] for p in pieces))
    id_type = types.pop() if types else "str"  # no ids at all: an empty map
    if sources is None:
        starts = np.cumsum([0] + [b - a for _, a, b, _ in pieces])
        sources = [(m, lambda slots, base=int(base): slots + base) for (m, _, _, _), base in zip(pieces, starts)]
    slots = sum(b - a for _, a, b, _ in pieces)
    text = sum(int(m._offsets[b] - m._offsets[a]) for m, a, b, _ in pieces) if id_type == "str" else 0
    header, sections = _ids_header(id_type, slots, text)
    tables = sources

    def body(fh: BinaryIO) -> None:
        _write_id_values(fh, pieces, id_type, sections)
        _write_key_tables(fh, pieces, tables, id_type, sections, slots)

    atomic_write_bytes(path, _IDS_MAGIC + _LEN.pack(len(header)) + header, body)


def _ids_header(id_type: str, slots: int, text: int) -> tuple[bytes, dict[str, list[int]]]:
    """The padded JSON header of an ``.ids`` file of ``slots`` ids (``text`` bytes of string ids) and its
    sections' [offset, bytes], 8-byte aligned after the header."""
    layout = [("values", 8 * slots)] if id_type == "int" else [("offsets", 8 * (slots + 1)), ("blob", text)]
    layout += [("keys", 8 * slots), ("key_slots", 8 * slots)]
    sections: dict[str, list[int]] = {}
    reserve = 512
    while True:  # the header's length places the sections: reserve room for it, grow until it fits
        at = len(_IDS_MAGIC) + _LEN.size + reserve
        for name, nbytes in layout:
            at = -(-at // 8) * 8
            sections[name] = [at, nbytes]
            at += nbytes
        header = json.dumps({"format": _IDS_FORMAT, "format_version": 1, "id_type": id_type, "slots": slots,
                             "sections": sections}).encode("utf-8")
        if len(header) <= reserve:
            return header.ljust(reserve), sections
        reserve *= 2


def _pad_to(fh: BinaryIO, where: int) -> None:
    fh.write(b"\0" * (where - fh.tell()))


def _write_id_values(
    fh: BinaryIO, pieces: Sequence[tuple[IdMap, int, int, str]], id_type: str, sections: dict[str, list[int]]
) -> None:
    """The ids of ``pieces`` in slot order: integer values, or string offsets then the text, streamed."""
    if id_type == "int":
        _pad_to(fh, sections["values"][0])
        for ids, a, b, _ in pieces:
            _stream(fh, ids._values[a:b].astype("<i8", copy=False))
        return
    _pad_to(fh, sections["offsets"][0])
    fh.write(np.zeros(1, "<i8").tobytes())
    base = 0
    for ids, a, b, _ in pieces:
        _stream(fh, (ids._offsets[a + 1 : b + 1] - ids._offsets[a] + base).astype("<i8"))
        base += int(ids._offsets[b] - ids._offsets[a])
    _pad_to(fh, sections["blob"][0])
    for ids, a, b, _ in pieces:
        _stream(fh, ids._blob()[int(ids._offsets[a]) : int(ids._offsets[b])])


def _write_key_tables(
    fh: BinaryIO,
    pieces: Sequence[tuple[IdMap, int, int, str]],
    sources: Sequence[tuple[IdMap, Callable[[np.ndarray], np.ndarray]]],
    id_type: str,
    sections: dict[str, list[int]],
    slots: int,
) -> None:
    """The sorted key table and each key's slot, merged from ``sources`` a chunk at a time; a repeat is refused."""
    _pad_to(fh, sections["keys"][0])
    done = 0
    for keys, places in _merged_tables(sources):
        _refuse_repeats(keys, places, pieces, id_type)
        fh.seek(sections["keys"][0] + 8 * done)
        fh.write(keys.astype("<u8", copy=False).tobytes())
        fh.seek(sections["key_slots"][0] + 8 * done)
        fh.write(places.astype("<i8", copy=False).tobytes())
        done += keys.size
    if done != slots:
        raise IdMapError(f"the sources hold {done} ids, the pieces {slots}")
    fh.seek(0, os.SEEK_END)
    _pad_to(fh, sections["key_slots"][0] + 8 * slots)


def _merged_tables(
    sources: Sequence[tuple[IdMap, Callable[[np.ndarray], np.ndarray]]]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The sources' keys and their new slots in (key, slot) order, a batch at a time: a k-way merge of the
    sources' sorted key tables taking at most `_MERGE_ROWS` rows of them all per batch (split evenly,
    at least `_MERGE_MIN_ROWS` of each), so a merge of many parts holds no more than one of few.

    A batch takes every row of every source whose key is at most the smallest of the sources' batch
    ends, so equal keys never straddle two batches (a repeated id is always seen within one).
    """
    tables = [(m._table(), place) for m, place in sources if len(m)]
    at = [0] * len(tables)
    rows = max(min(_MERGE_MIN_ROWS, _MERGE_ROWS), _MERGE_ROWS // max(1, len(tables)))
    while True:
        heads = [(keys[i : i + rows], slots[i : i + rows]) for ((keys, slots), _), i in zip(tables, at)]
        open_ends = [h[0][-1] for h, ((keys, _), _), i in zip(heads, tables, at) if h[0].size and i + h[0].size < keys.size]
        if not any(h[0].size for h in heads):
            return
        bound = min(open_ends) if open_ends else None
        batch_keys, batch_slots = [], []
        for n, ((keys, slots), (_, place)) in enumerate(zip(heads, tables)):
            take = keys.size if bound is None else int(np.searchsorted(keys, bound, side="right"))
            batch_keys.append(np.asarray(keys[:take], np.uint64))
            batch_slots.append(place(np.asarray(slots[:take], np.int64)))
            at[n] += take
        keys, slots = np.concatenate(batch_keys), np.concatenate(batch_slots)
        order = np.lexsort((slots, keys))  # equal keys (a collision, or a repeat) in slot order
        yield keys[order], slots[order]


def _stream(fh: BinaryIO, array: np.ndarray) -> None:
    """Write ``array``'s bytes a bounded chunk at a time (a memory-mapped source is paged in and out)."""
    step = max(1, _COPY_BYTES // max(1, array.itemsize))
    for begin in range(0, array.size, step):
        fh.write(np.ascontiguousarray(array[begin : begin + step]).tobytes())


def _refuse_repeats(
    keys: np.ndarray, places: np.ndarray, pieces: Sequence[tuple[IdMap, int, int, str]], id_type: str
) -> None:
    """Raise `IdMapError` naming an id that two slots share (equal sorted keys whose ids are equal)."""
    same = np.flatnonzero(keys[1:] == keys[:-1])
    if not same.size:
        return
    ends = np.cumsum([b - a for _, a, b, _ in pieces])

    def locate(slot: int) -> tuple[Any, str]:
        p = int(np.searchsorted(ends, slot, side="right"))
        ids, a, b, name = pieces[p]
        local = a + slot - (int(ends[p]) - (b - a))
        return ids.ids_at(np.array([local]))[0], name

    for at in same.tolist():
        (x, where_x), (y, where_y) = locate(int(places[at])), locate(int(places[at + 1]))
        if x == y:
            raise IdMapError(f"the id {x!r} is in {where_x} and in {where_y}")
