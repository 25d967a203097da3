"""Embedding shards: a gallery's vectors as files, written resumably by any number of ranks.

The layout is clip-retrieval's, so its tools, autofaiss and embedding-reader read it unchanged::

    EMB_DIR/
      manifest.json                       what was encoded, by which encoder, and the counts
      img_emb/img_emb_00000.npy           float16 (rows, dim), L2-normalised, one row per readable image
      metadata/metadata_00000.parquet     column ``image_path``: the id of each row, in row order
      logs/log_00000.json                 the shard's image count, the rank that wrote it, the unreadable images

Shard ``n`` holds the images ``n * shard_size`` to ``(n + 1) * shard_size - 1`` of the input list, so
its contents depend on nothing but ``n``: rank ``r`` of ``w`` encodes the shards with ``n % w == r``
and any world size writes the same files. Each file is written atomically and the log is written
last, so a shard counts as complete exactly when its log exists; a re-run (after a crash, a kill,
a pre-empted node) encodes only the shards without one.

`EmbeddingShards` reads such a folder back (or any clip-retrieval output: the manifest is optional),
checking every shape, dtype and count, and memory-maps the vectors.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image

from uit_reid.io import atomic_write_bytes, atomic_write_text, folder_names

__all__ = [
    "EmbeddingShards",
    "ShardFormatError",
    "encode_shards",
    "read_image_list",
    "shard_plan",
    "write_shard",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_FORMAT = "uit_reid.embeddings"
_VERSION = 1
_ID_COLUMN = "image_path"  # clip-retrieval's column name for a file's id
_NPY = re.compile(r"img_emb_([0-9]+)\.npy")


class ShardFormatError(ValueError):
    """An embedding folder (or one of its files) is not what the manifest and the layout say."""


def _require_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:  # pragma: no cover - the extra is installed in tests
        raise ImportError("embedding shards need pyarrow, a dependency of uit_reid: pip install 'pyarrow>=14'") from None
    return pyarrow


def _names(n: int, width: int) -> tuple[str, str, str]:
    num = str(n).zfill(width)
    return f"img_emb/img_emb_{num}.npy", f"metadata/metadata_{num}.parquet", f"logs/log_{num}.json"


@dataclass(frozen=True)
class _Plan:
    num_images: int
    shard_size: int
    num_shards: int
    width: int
    images_sha256: str


def shard_plan(files: Sequence[str], shard_size: int) -> _Plan:
    """How ``files`` split into shards: counts, the zero-padded name width and the list's digest."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.encode("utf-8", "surrogateescape") + b"\n")
    num_shards = -(-len(files) // shard_size)
    return _Plan(len(files), shard_size, num_shards, max(5, len(str(max(num_shards - 1, 0)))), digest.hexdigest())


def read_image_list(source: str | os.PathLike[str]) -> list[str]:
    """The images to encode: every image under a folder (sorted, absolute) or the lines of a list file.

    A list file names one image per line (blank lines ignored); relative names are taken from the
    list's folder, and each name becomes the image's id as written absolute.
    """
    from uit_reid.retrieval.search import list_images

    path = Path(source)
    if path.is_dir():
        return [str(p) for p in list_images(path)]
    if not path.exists():
        raise FileNotFoundError(f"--images {path}: no such folder or list file")
    base = path.absolute().parent
    with _open_regular(path, "--images list") as fh:  # a FIFO is refused, not waited on
        text = fh.read().decode("utf-8", "surrogateescape")  # names as the file system gives them (os.fsdecode)
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if "\x00" in name:
            raise ValueError(f"{path}, line {lineno}: a NUL character in an image name")
        out.append(str(base / name) if not os.path.isabs(name) else name)
    if not out:
        raise ValueError(f"{path} names no images")
    return out


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _parquet_bytes(ids: list[str]) -> bytes:
    pa = _require_pyarrow()
    buffer = io.BytesIO()
    pa.parquet.write_table(pa.table({_ID_COLUMN: pa.array(ids, type=pa.string())}), buffer)
    return buffer.getvalue()


def write_shard(out: str | os.PathLike[str], n: int, vectors: np.ndarray, ids: Sequence[str], width: int = 5) -> None:
    """Write shard ``n`` (vectors as given, their ids) into ``out`` in the layout above, each file atomically.

    Writes no log or manifest: a folder of such shards is clip-retrieval's output format, which
    `EmbeddingShards` reads as it is.
    """
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise ValueError(f"shard {n}: {len(ids)} ids for vectors of shape {vectors.shape}")
    npy, parquet, _ = _names(n, width)
    atomic_write_bytes(Path(out) / npy, _npy_bytes(vectors))
    atomic_write_bytes(Path(out) / parquet, _parquet_bytes(list(ids)))


def encode_shards(
    files: Sequence[str],
    out: str | os.PathLike[str],
    image_encoder: Callable[[torch.Tensor], torch.Tensor],
    transform: Callable[[Image.Image], torch.Tensor],
    *,
    fingerprint: str | None,
    shard_size: int = 10_000,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    image_size: Sequence[int] | None = None,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode ``files`` into embedding shards under ``out`` (layout in the module docstring).

    Rank ``rank`` of ``world_size`` encodes the missing shards ``n`` with ``n % world_size == rank``;
    ``barrier`` synchronises the ranks (rank 0 writes the manifest before the others start and sums
    the logs after all are done). An existing folder is resumed only when it was started for the
    same image list, shard size and encoder fingerprint; anything else is refused, naming the field.
    Returns the final manifest (on every rank).
    """
    from uit_reid.retrieval.search import encode_image_files

    out = Path(out)
    plan = shard_plan(list(files), shard_size)
    if plan.num_images == 0:
        raise ValueError("no images to encode")
    _refuse_repeated_images(files)
    identity = _identity(plan, fingerprint)
    if rank == 0:
        _start_manifest(out, identity, metadata or {})
    barrier()
    mine = [n for n in range(plan.num_shards) if n % world_size == rank]
    todo = [n for n in mine if not (out / _names(n, plan.width)[2]).is_file()]
    logger.info("rank %d/%d: %d of its %d shards to encode", rank, world_size, len(todo), len(mine))
    for n in todo:
        shard_files = list(files[n * shard_size : (n + 1) * shard_size])
        unnamed = [f for f in shard_files if not _is_utf8(f)]
        for f in unnamed:  # the metadata file holds UTF-8 ids: such a name cannot be one, so it is not encoded
            logger.warning("shard %d: skipping %s: its name is not valid UTF-8", n, f)
        feats, paths, skipped = encode_image_files(
            [f for f in shard_files if _is_utf8(f)], image_encoder, transform, batch_size=batch_size,
            device=device, progress=progress, image_size=image_size, num_workers=num_workers, desc=f"shard {n}",
        )
        skipped += unnamed
        _write_encoded_shard(out, n, plan.width, rank, len(shard_files), feats, paths, skipped)
    barrier()
    if rank == 0:
        _finish_manifest(out, identity, metadata or {}, plan)
    barrier()
    return _read_manifest(out)


def _identity(plan: _Plan, fingerprint: str | None) -> dict[str, Any]:
    """The manifest fields a resumed folder must match: the same image list, shard size and encoder."""
    return {
        "format": _FORMAT,
        "format_version": _VERSION,
        "fingerprint": fingerprint,
        "shard_size": plan.shard_size,
        "num_images": plan.num_images,
        "num_shards": plan.num_shards,
        "images_sha256": plan.images_sha256,
    }


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # surrogate-escaped bytes of a name that is not UTF-8
        return False
    return True


def _refuse_repeated_images(files: Sequence[str]) -> None:
    """Refuse an image list that names one file more than once (its rows would share one id)."""
    from uit_reid.retrieval.idmap import keys_of

    keys = np.sort(keys_of([str(f) for f in files], "str")[0])
    if not (keys[1:] == keys[:-1]).any():
        return
    seen: dict[str, int] = {}
    for f in files:  # a key appears twice: find the name (equal keys of different names are let through)
        seen[f] = seen.get(f, 0) + 1
    repeated = next((f for f, count in seen.items() if count > 1), None)
    if repeated is not None:
        raise ValueError(f"the image list names {repeated} {seen[repeated]} times; each image may be listed once")


def _start_manifest(out: Path, identity: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Write the incomplete manifest of a new run, or check that ``out`` holds this very run (resume)."""
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        old = _read_manifest(out)
        for key, value in identity.items():
            if old.get(key) != value:
                raise ValueError(
                    f"{out} holds shards of another run ({key}: {old.get(key)!r} there, {value!r} now); "
                    "use a new --out folder"
                )
    elif out.exists() and folder_names(out):
        raise ValueError(f"{out} is not empty and has no {MANIFEST}: use a new --out folder")
    else:
        atomic_write_text(manifest_path, json.dumps({**identity, "complete": False, **metadata}, indent=1))


def _write_encoded_shard(
    out: Path, n: int, width: int, rank: int, images: int, feats: np.ndarray, paths: list[str], skipped: list[str]
) -> None:
    """Shard ``n``'s normalised float16 vectors and ids, then its log (written last: the shard is complete)."""
    if paths:
        vectors = torch.nn.functional.normalize(torch.from_numpy(feats), dim=1).numpy().astype(np.float16)
    else:
        vectors = np.zeros((0, 0), np.float16)
    write_shard(out, n, vectors, paths, width)
    log = _names(n, width)[2]
    record = {"shard": n, "rank": rank, "images": images, "encoded": len(paths),
              "dim": int(vectors.shape[1]), "skipped": skipped}
    atomic_write_text(out / log, json.dumps(record, indent=1))
    if skipped:
        logger.warning("shard %d: skipped %d unreadable image(s), named in %s", n, len(skipped), out / log)


def _finish_manifest(out: Path, identity: dict[str, Any], metadata: dict[str, Any], plan: _Plan) -> None:
    """Sum the shards' logs into the complete manifest (rank 0, after every rank is done)."""
    logs = [_read_log(out, n, plan.width) for n in range(plan.num_shards)]
    dims = {r["dim"] for r in logs if r["encoded"]}
    if len(dims) > 1:
        raise ShardFormatError(f"{out}: shards of different dimensions {sorted(dims)}")
    manifest = {
        **identity,
        **metadata,
        "complete": True,
        "dim": dims.pop() if dims else None,
        "encoded": sum(r["encoded"] for r in logs),
        "skipped": sum(len(r["skipped"]) for r in logs),
        "shards": [{"rows": r["encoded"], "skipped": len(r["skipped"])} for r in logs],
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))


MAX_MANIFEST_BYTES = 64 << 20
"""Largest manifest or shard log read (a manifest lists ~40 bytes per shard: 64 MiB is over a million shards)."""
_SHARD_DIRS = ("img_emb", "metadata", "logs")
_ID_BATCH = 65536
"""Ids read from a metadata file at a time."""


def _open_regular(path: Path, what: str) -> BinaryIO:
    """``path`` opened for reading if it is a regular file; a FIFO, device or folder is refused at once
    (opened non-blocking, so a FIFO with no writer cannot hang the reader)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ShardFormatError(f"{what} {path} cannot be read: {err.strerror or err}") from None
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise ShardFormatError(f"{what} {path} is not a regular file")
    return fh


def _read_json(path: Path, what: str) -> Any:
    """A small JSON file (at most `MAX_MANIFEST_BYTES`), any failure one `ShardFormatError` naming it."""
    with _open_regular(path, what) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_MANIFEST_BYTES:
            raise ShardFormatError(f"{what} {path} is {size} bytes, more than the {MAX_MANIFEST_BYTES} read")
        raw = fh.read(MAX_MANIFEST_BYTES + 1)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ShardFormatError(f"{what} {path} cannot be read as JSON: {reason}") from None


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    meta = _read_json(path, "manifest")
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ShardFormatError(f"{path} is not an embedding manifest")
    if meta.get("format_version") != _VERSION:
        raise ShardFormatError(f"{path} has format_version {meta.get('format_version')!r}; this library reads {_VERSION}")
    return meta


def _read_log(folder: Path, n: int, width: int) -> dict[str, Any]:
    path = folder / _names(n, width)[2]
    record = _read_json(path, "shard log")
    if not isinstance(record, dict) or not all(
        _is_count(record.get(k)) for k in ("images", "encoded", "dim")
    ) or not isinstance(record.get("skipped"), list):
        raise ShardFormatError(f"shard log {path} lacks its counts")
    return record


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _manifest_files(folder: Path, manifest: dict[str, Any]) -> list[tuple[Path, Path]]:
    """The (vectors, ids) files a complete manifest names, its counts first weighed against the folder.

    Every count is checked against the files present before anything of that size is allocated, so
    ``num_shards: 10**9`` in a small manifest is refused at once; a shard file the manifest leaves out
    is refused too (it would be dropped silently).
    """
    path = folder / MANIFEST
    n = manifest.get("num_shards")
    if not _is_count(n) or n < 1:
        raise ShardFormatError(f"{path}: num_shards {n!r} is not a positive integer")
    present = sorted(e.name for e in os.scandir(folder / "img_emb") if _NPY.fullmatch(e.name)) if (
        folder / "img_emb").is_dir() else []
    if n != len(present):
        raise ShardFormatError(f"{path}: num_shards is {n} but {folder / 'img_emb'} holds {len(present)} "
                               "img_emb_*.npy files")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or len(shards) != n or not all(
            isinstance(e, dict) and _is_count(e.get("rows")) for e in shards):
        raise ShardFormatError(f"{path}: shards must list num_shards ({n}) entries with their row counts")
    size, images = manifest.get("shard_size"), manifest.get("num_images")
    if not (_is_count(size) and _is_count(images) and size >= 1 and -(-images // size) == n):
        raise ShardFormatError(f"{path}: num_images {images!r} in shards of shard_size {size!r} do not make "
                               f"num_shards {n}")
    width = max(5, len(str(n - 1)))
    files = [(folder / _names(i, width)[0], folder / _names(i, width)[1]) for i in range(n)]
    extra = sorted(set(present) - {npy.name for npy, _ in files})
    if extra:
        raise ShardFormatError(f"{path} does not list the shard {folder / 'img_emb' / extra[0]}: encode into a "
                               "new folder or remove the file")
    return files


class EmbeddingShards:
    """A folder of embedding shards, read back with every shape, dtype and count checked.

    With a manifest (written by `encode_shards`) the shards must be complete and agree with it; a
    folder without one (clip-retrieval's output) is read as the sorted ``img_emb_*.npy`` files with
    their ``metadata_*.parquet`` partners. Vectors are memory-mapped, never read whole.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"no embedding folder at {self.folder}")
        self.manifest: dict[str, Any] | None = None
        if (self.folder / MANIFEST).exists():
            self.manifest = _read_manifest(self.folder)
            if not self.manifest.get("complete"):
                raise ShardFormatError(
                    f"{self.folder} is incomplete (an encode run was interrupted): run the same encode command again"
                )
            self._files = _manifest_files(self.folder, self.manifest)
        else:
            found = sorted(
                (int(m.group(1)), m.group(1)) for p in (self.folder / "img_emb").glob("img_emb_*.npy")
                if (m := _NPY.fullmatch(p.name))
            )
            if not found:
                raise ShardFormatError(f"{self.folder} holds no {MANIFEST} and no img_emb/img_emb_*.npy files")
            self._files = [
                (self.folder / "img_emb" / f"img_emb_{num}.npy", self.folder / "metadata" / f"metadata_{num}.parquet")
                for _, num in found
            ]
        self.fingerprint: str | None = self.manifest.get("fingerprint") if self.manifest else None
        self.rows: list[int] = []
        dims = set()
        for npy, _ in self._files:
            shape = self._shape(npy)
            self.rows.append(shape[0])
            if shape[0]:
                dims.add(shape[1])
        if len(dims) > 1:
            raise ShardFormatError(f"{self.folder}: shards of different dimensions {sorted(dims)}")
        self.dim: int = dims.pop() if dims else 0
        if self.manifest is not None:
            expected = [s["rows"] for s in self.manifest["shards"]]
            if expected != self.rows:
                raise ShardFormatError(f"{self.folder}: the shards' row counts differ from the manifest's")
            if self.dim and self.manifest.get("dim") != self.dim:
                raise ShardFormatError(f"{self.folder / MANIFEST}: dim {self.manifest.get('dim')!r}, but the shards "
                                       f"hold vectors of dimension {self.dim}")
        self.offsets = np.concatenate([[0], np.cumsum(self.rows, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_shards(self) -> int:
        return len(self._files)

    def vector_files(self) -> list[Path]:
        """The shards' ``.npy`` files, in order."""
        return [npy for npy, _ in self._files]
    @property
    def inputs(self) -> list[Path]:
        """The files and folders this reads (for `uit_reid.io.check_not_input`: no output may be one)."""
        return [self.folder / MANIFEST, *(self.folder / d for d in _SHARD_DIRS)]

    @staticmethod
    def _shape(npy: Path) -> tuple[int, ...]:
        """The shape the ``.npy`` header declares, checked against the file's size (no data is read)."""
        with _open_regular(npy, "embedding file") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(fh)  # the header only: no data is read
            except (OSError, ValueError) as err:
                raise ShardFormatError(f"embedding file {npy} cannot be read: {err}") from None
            if len(shape) != 2 or fortran or dtype not in (np.dtype("<f2"), np.dtype("<f4")):
                raise ShardFormatError(f"embedding file {npy}: expected a 2-D float16/float32 C-order array, "
                                       f"got shape {shape}, dtype {dtype}")
            data = os.fstat(fh.fileno()).st_size - fh.tell()
        if data != shape[0] * shape[1] * dtype.itemsize:
            raise ShardFormatError(f"embedding file {npy}: its header declares shape {shape} of {dtype} "
                                   f"({shape[0] * shape[1] * dtype.itemsize} bytes) but it holds {data} bytes")
        return shape

    def files(self, n: int) -> tuple[Path, Path]:
        """Shard ``n``'s vectors file (``.npy``) and ids file (``.parquet``)."""
        return self._files[n]

    def stamps(self, which: Iterable[int] | None = None) -> list[list[int]]:
        """[size, modification time in ns] of the vectors file of each shard in ``which`` (default: all):
        what an index built from them records, so re-ranking can tell a shard changed in place."""
        out = []
        for n in range(self.num_shards) if which is None else which:
            st = os.stat(self._files[n][0])
            out.append([st.st_size, st.st_mtime_ns])
        return out

    def vectors(self, n: int) -> np.ndarray:
        """Shard ``n``'s vectors, memory-mapped read-only (float16 as written, or float32)."""
        npy = self._files[n][0]
        if self.rows[n] == 0:
            return np.zeros((0, self.dim), np.float16)
        try:
            arr = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ShardFormatError(f"embedding file {npy} cannot be read: {err}") from None
        if arr.shape != (self.rows[n], self.dim):
            raise ShardFormatError(f"embedding file {npy} changed while open: shape {arr.shape}")
        return arr

    def ids(self, n: int) -> list[str]:
        """Shard ``n``'s ids (the ``image_path`` column), one per vector row.

        The parquet footer's row count is checked against the rows of the ``.npy`` file (whose size
        proves them) before any id is read; ids are then read in batches.
        """
        pa = _require_pyarrow()
        path = self._files[n][1]
        ids: list[str] = []
        with _open_regular(path, "metadata file") as fh:
            try:
                parquet = pa.parquet.ParquetFile(fh)
                declared = parquet.metadata.num_rows
                if declared != self.rows[n]:
                    raise ShardFormatError(f"metadata file {path} declares {declared} ids for the {self.rows[n]} "
                                           f"vectors of {self._files[n][0]}")
                schema = parquet.schema_arrow
                kind = schema.field(_ID_COLUMN).type if _ID_COLUMN in schema.names else pa.null()
                kind = kind.value_type if pa.types.is_dictionary(kind) else kind  # pandas' categoricals
                if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                    raise ShardFormatError(f"metadata file {path} has no string column {_ID_COLUMN!r}")
                for batch in parquet.iter_batches(batch_size=_ID_BATCH, columns=[_ID_COLUMN]):
                    column = batch.column(0)
                    if column.null_count or len(ids) + len(column) > self.rows[n]:
                        raise ShardFormatError(f"metadata file {path}: null ids, or more than its footer declares")
                    ids.extend(column.to_pylist())
            except (OSError, pa.ArrowException) as err:
                raise ShardFormatError(f"metadata file {path} cannot be read: {err}") from None
        if len(ids) != self.rows[n]:
            raise ShardFormatError(f"metadata file {path}: {len(ids)} ids for {self.rows[n]} vectors")
        return ids

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(vectors, ids) of each shard in order, one shard in memory at a time."""
        for n in range(self.num_shards):
            yield self.vectors(n), self.ids(n)

    def rows_of(self, positions: np.ndarray) -> np.ndarray:
        """float32 vectors at global row ``positions`` (any shape), gathered from the memory-mapped shards."""
        positions = np.asarray(positions, dtype=np.int64)
        flat = positions.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"rows out of range 0..{len(self) - 1}")
        out = np.empty((flat.size, self.dim), np.float32)
        shard = np.searchsorted(self.offsets, flat, side="right") - 1
        for n in np.unique(shard).tolist():
            sel = np.flatnonzero(shard == n)
            local = flat[sel] - self.offsets[n]
            order = np.argsort(local)
            out[sel[order]] = self.vectors(n)[local[order]]
        return out.reshape(*positions.shape, self.dim)
