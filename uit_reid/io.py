"""Atomic file writes: a crash or a kill never leaves a half-written file under the final name."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_torch_save", "atomic_write_bytes", "atomic_write_text", "check_writable", "file_sha256"]

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview, *more: bytes | memoryview) -> None:
    """Write ``data`` (then each of ``more``) to a temporary file beside ``path``, fsync it, then
    ``os.replace`` it into place. The file gets the permissions ``open()`` would give it (0666 minus
    the umask), not the owner-only mode of temporary files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            for chunk in more:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through `atomic_write_bytes` (objects must load with ``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_contents(folder: str | os.PathLike, shown: int) -> str:
    """The first ``shown`` names in ``folder`` (sorted), ", ..." after them if there are more; "" if empty.

    For refusals that name what a folder already holds.
    """
    names = sorted(p.name for p in Path(folder).iterdir())
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def check_writable(path: str | os.PathLike) -> Path:
    """Fail now, naming ``path``, if a file cannot be written there later (checked by writing a probe).

    Creates missing parent folders, as the writers above would. Commands call this before long work
    so that an unwritable ``--out`` fails in a second, not after the work.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise PermissionError(f"cannot write {path}: {reason} in {path.parent}") from None
    os.close(fd)
    os.unlink(probe)
    return path
