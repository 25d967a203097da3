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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    if not path.is_file():
        raise FileNotFoundError(f"--images {path}: no such folder or list file")
    base = path.absolute().parent
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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
    identity = {
        "format": _FORMAT,
        "format_version": _VERSION,
        "fingerprint": fingerprint,
        "shard_size": plan.shard_size,
        "num_images": plan.num_images,
        "num_shards": plan.num_shards,
        "images_sha256": plan.images_sha256,
    }
    if rank == 0:
        _start_manifest(out, identity, metadata or {})
    barrier()
    mine = [n for n in range(plan.num_shards) if n % world_size == rank]
    todo = [n for n in mine if not (out / _names(n, plan.width)[2]).is_file()]
    logger.info("rank %d/%d: %d of its %d shards to encode", rank, world_size, len(todo), len(mine))
    for n in todo:
        shard_files = list(files[n * shard_size : (n + 1) * shard_size])
        feats, paths, skipped = encode_image_files(
            shard_files, image_encoder, transform, batch_size=batch_size, device=device, progress=progress,
            image_size=image_size, num_workers=num_workers, desc=f"shard {n}",
        )
        _write_encoded_shard(out, n, plan.width, rank, len(shard_files), feats, paths, skipped)
    barrier()
    if rank == 0:
        _finish_manifest(out, identity, metadata or {}, plan)
    barrier()
    return _read_manifest(out)


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


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardFormatError(f"{path} cannot be read as JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ShardFormatError(f"{path} is not an embedding manifest")
    if meta.get("format_version") != _VERSION:
        raise ShardFormatError(f"{path} has format_version {meta.get('format_version')!r}; this library reads {_VERSION}")
    return meta


def _read_log(folder: Path, n: int, width: int) -> dict[str, Any]:
    path = folder / _names(n, width)[2]
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardFormatError(f"shard log {path} cannot be read: {err}") from None
    if not isinstance(record, dict) or not all(
        isinstance(record.get(k), int) and not isinstance(record.get(k), bool) for k in ("images", "encoded", "dim")
    ) or not isinstance(record.get("skipped"), list):
        raise ShardFormatError(f"shard log {path} lacks its counts")
    return record


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
            n = self.manifest.get("num_shards")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ShardFormatError(f"{self.folder / MANIFEST}: num_shards {n!r} is not a positive integer")
            width = max(5, len(str(n - 1)))
            self._files = [(self.folder / _names(i, width)[0], self.folder / _names(i, width)[1]) for i in range(n)]
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
            expected = [s.get("rows") for s in self.manifest.get("shards", [])]
            if expected != self.rows:
                raise ShardFormatError(f"{self.folder}: the shards' row counts differ from the manifest's")
        self.offsets = np.concatenate([[0], np.cumsum(self.rows, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_shards(self) -> int:
        return len(self._files)

    def vector_files(self) -> list[Path]:
        """The shards' ``.npy`` files, in order."""
        return [npy for npy, _ in self._files]

    @staticmethod
    def _shape(npy: Path) -> tuple[int, ...]:
        try:
            with open(npy, "rb") as fh:
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
        return shape

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
        """Shard ``n``'s ids (the ``image_path`` column), one per vector row."""
        pa = _require_pyarrow()
        path = self._files[n][1]
        try:
            table = pa.parquet.read_table(path, columns=[_ID_COLUMN])
        except (OSError, pa.ArrowException) as err:
            raise ShardFormatError(f"metadata file {path} cannot be read: {err}") from None
        ids = table.column(_ID_COLUMN).to_pylist()
        if len(ids) != self.rows[n] or not all(isinstance(i, str) for i in ids):
            raise ShardFormatError(
                f"metadata file {path}: {len(ids)} ids for {self.rows[n]} vectors (or ids that are not strings)"
            )
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
