"""Atomic file writes (a crash or a kill never leaves a half-written file under the final name) and
`FolderLock`, one writer per output folder."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import logging
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import filelock
import torch

logger = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "FolderInUseError", "FolderLock", "atomic_torch_save", "atomic_write_bytes",
           "atomic_write_text", "check_not_input", "check_writable", "file_sha256", "folder_contents",
           "folder_names", "remove_stale_temp_files"]

_NEW_FILE_MODE = 0o666
"""What ``open()`` asks for; the kernel takes the umask off, so no caller ever reads or sets it."""


def _create_temp_file(path: Path) -> tuple[int, Path]:
    """A new, empty ``.NAME.XXXXXXXX.tmp`` beside ``path``, opened for writing, in the mode ``open()`` gives.

    ``O_EXCL`` makes the name ours alone (as ``tempfile.mkstemp`` does, whose files are owner-only).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), _NEW_FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {path}: 100 names were taken")  # pragma: no cover


Part = bytes | memoryview | Callable[[BinaryIO], None]
"""A piece of a file `atomic_write_bytes` writes: bytes, or a function that streams them into the file."""


def atomic_write_bytes(path: str | os.PathLike, data: Part, *more: Part) -> None:
    """Write ``data`` (then each of ``more``) to a temporary file beside ``path``, fsync it, then
    ``os.replace`` it into place. A part may be a function ``write(fh)`` that streams its bytes into
    the open file (a large serialisation need not exist in memory at once); if it raises, the
    temporary file is removed and ``path`` is untouched. The file gets the permissions ``open()``
    would give it (0666 minus the umask, applied by the kernel), not the owner-only mode of
    ``tempfile`` files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in (data, *more):
                if callable(chunk):
                    chunk(fh)
                else:
                    fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the temporary files `atomic_write_bytes` left in ``folder`` (for targets ``name``) when
    killed mid-write; returns them. Only for folders this process holds (a `FolderLock`), where no
    other writer can be mid-write."""
    removed = []
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        logger.info("removed %d temporary file(s) a killed write left in %s", len(removed), folder)
    return removed


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


def folder_names(folder: str | os.PathLike) -> list[str]:
    """The sorted names in ``folder``, a `FolderLock` file left out (holding a lock leaves a folder empty)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name != LOCK_NAME)


def folder_contents(folder: str | os.PathLike, shown: int) -> str:
    """The first ``shown`` names in ``folder`` (sorted), ", ..." after them if there are more; "" if empty.

    For refusals that name what a folder already holds (a `FolderLock` file does not count).
    """
    names = folder_names(folder)
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


def check_not_input(
    out: str | os.PathLike, inputs: Iterable[str | os.PathLike], flag: str = "--out", writes: Iterable[str] = ()
) -> None:
    """Refuse, naming both, an output ``out`` that is one of ``inputs`` or lies inside an input folder;
    for a folder ``out``, ``writes`` names the files written into it, none of which may be (or hold) an
    input. Writing any of these would destroy what the command reads, so commands call this first.

    Paths are compared resolved (symlinks followed), so ``a/../b`` and a link to an input are caught.
    """
    target = Path(out).resolve()
    written = [(name, (target / name).resolve()) for name in writes]
    for given in inputs:
        source = Path(given).resolve()
        if target == source:
            raise ValueError(f"{flag} {out} is the input {given}; choose another {flag}")
        if source.is_dir() and target.is_relative_to(source):
            raise ValueError(f"{flag} {out} is inside the input folder {given}; choose another {flag}")
        for name, path in written:
            if source.is_relative_to(path):
                raise ValueError(f"{flag} {out} would replace the input {given} with its {name}; choose another {flag}")


LOCK_NAME = ".uit_reid.lock"


class FolderInUseError(OSError):
    """Another process holds the `FolderLock` of a folder (the message names it)."""


class FolderLock:
    """One writer per folder: an exclusive lock on ``FOLDER/.uit_reid.lock``, through ``filelock``.

    ``acquire`` creates the folder if needed and fails at once with `FolderInUseError` naming the
    holder (process id, host, start time, command) when another process holds it. The lock is the
    operating system's (``flock`` on Unix, ``LockFileEx`` on Windows), so the kernel drops it when
    the holder exits in any way, ``kill -9`` included, and a stale file never blocks anyone;
    ``release`` removes the file. ``what`` names the holder's job in the refusal.
    """

    def __init__(self, folder: str | os.PathLike, what: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._lock: filelock.BaseFileLock | None = None
        self._fd: int | None = None  # the lock's own descriptor, lent by filelock while the lock is held

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        holder = f"pid {os.getpid()} on {socket.gethostname()}, since {started}: {' '.join(sys.argv)[:300]}\n"
        lock = filelock.FileLock(
            self.path, timeout=0, thread_local=False, fallback_to_soft=False,
            on_acquired=lambda fd: self._write_holder(fd, holder),
        )
        try:
            lock.acquire()
        except filelock.Timeout:
            raise FolderInUseError(
                f"{self.folder} is in use by another {self.what} ({self._holder()}); wait for it to finish or "
                "choose another folder") from None
        self._lock = lock
        return self

    def _holder(self) -> str:
        """Who holds the lock, as the holder wrote it into the lock file."""
        try:
            text = self.path.read_bytes()[:4096].decode("utf-8", "replace").strip()
        except OSError:  # Windows keeps a held file's first byte from other readers
            text = ""
        return text or "a process that is starting"

    def release(self) -> None:
        """Remove the lock file and drop the lock; idempotent."""
        if self._lock is None:
            return
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no stale holder named, whatever happens to the file
        # while still holding it: a waiter that locked the old inode sees it unlinked and retries
        with contextlib.suppress(OSError):  # Windows removes no open file
            self.path.unlink(missing_ok=True)
        self._lock.release()
        self._lock, self._fd = None, None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _write_holder(self, fd: int, holder: str) -> None:
        """Replace the lock file's text by ``holder``, through the descriptor that holds the lock."""
        self._fd = fd
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, holder.encode())
