"""The files a served index reads while it runs, watched so that a change on disk never crashes the service.

A memory-mapped file that is truncated kills the process with SIGBUS at the next read of a lost page;
one overwritten in place feeds FAISS garbage (scores of 3.5e37). `WatchedFiles` records, at load, every
file the service maps or re-opens (the index file whose IVF lists are mapped, the re-ranking shards):
its identity (device, inode, size, mtime) and, for a mapped file, an open descriptor. Then

- `reading` wraps each search: it refuses (`FilesChanged`) when a descriptor's identity changed or a
  re-opened file is no longer the one loaded (moved, removed, replaced), and again after the search
  when a file changed while it ran, so no answer computed from changed bytes is returned;
- on Linux `take_leases` puts a read lease (``fcntl(F_SETLEASE)``) on each mapped file: the kernel holds
  back any process that opens one of them for writing or truncates it until the service lets go, which
  it does (from a SIGIO handler) only once the search in flight is done and later ones are refused. So no
  page can vanish under a search: `cp new.faiss served.faiss` waits a few milliseconds, then the service
  answers 503. Without a lease (another OS, a file owned by another user, a file system without leases)
  only the checks hold, and a truncation in the very milliseconds of a search can still end the process.
  Re-opened files (the ``--rerank`` shards, a thousand of them for 10M images) are checked by path,
  at most once a second and whenever a search fails (a moved folder fails the read): no descriptor is
  held for them, so they take none of the connections' file slots, and a truncation during the
  milliseconds a re-ranking reads them is not held back; one rewritten in place with its size kept can
  feed re-ranking for up to that second.

An atomic replacement (write elsewhere, then rename over the path) changes nothing the service maps: the
index file's old bytes stay mapped and are served. A re-opened file replaced that way is refused.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FilesChanged", "WatchedFile", "WatchedFiles"]

logger = logging.getLogger(__name__)

try:  # Linux only
    from fcntl import F_GETLEASE, F_RDLCK, F_SETLEASE, F_UNLCK, fcntl
except ImportError:  # pragma: no cover - other platforms
    fcntl = None  # type: ignore[assignment]


class FilesChanged(RuntimeError):
    """A file the served index reads changed on disk since it was loaded: the service cannot search."""


@dataclass(frozen=True)
class WatchedFile:
    """A file the service reads while it runs.

    Attributes:
        path: the file.
        what: what it is, for messages ("index file", "embedding file").
        reopened: True when the service opens the path again for each read (so a file moved away or
            replaced by rename is a change too); such a file is watched by path, with no descriptor
            held and no lease. False when the service keeps the loaded file mapped.
    """

    path: Path
    what: str
    reopened: bool = False


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _changed(f: WatchedFile) -> str:
    return f"{f.what} {f.path} changed on disk since the service loaded it; restart the service to serve it"


class WatchedFiles:
    """Descriptors and identities of ``files``, taken now (call right after the index is loaded).

    ``recheck_seconds``: how often a search also checks the re-opened files (each a ``stat``; a read
    that fails checks them at once). Raises ``OSError`` naming the file when one cannot be opened.
    """

    def __init__(self, files: Sequence[WatchedFile], *, recheck_seconds: float = 1.0) -> None:
        self.files = list(files)
        self.recheck_seconds = float(recheck_seconds)
        self._fds: list[int] = []
        self._ids: list[tuple[int, int, int, int]] = []
        try:
            for f in self.files:
                if f.reopened:  # checked by path: no descriptor, so a thousand shards take no file slots
                    self._fds.append(-1)
                    self._ids.append(_identity(os.stat(f.path)))
                    continue
                fd = os.open(f.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                self._fds.append(fd)
                self._ids.append(_identity(os.fstat(fd)))
        except OSError:
            self.close()
            raise
        self._mapped = [n for n, f in enumerate(self.files) if not f.reopened]
        self._reopened = [n for n, f in enumerate(self.files) if f.reopened]
        self._reopened_checked = time.monotonic()
        self._lock = threading.RLock()  # held while a search reads the files; re-entrant for the signal handler
        self._leased: list[bool] = [False] * len(self.files)  # a lease held now
        self._wanted: list[bool] = [False] * len(self.files)  # a lease taken by take_leases (to renew)
        self._lease_broken = False
        self._problem: str | None = None
        self._previous_handler: Any = None

    def __len__(self) -> int:
        return len(self.files)

    # ------------------------------------------------------------------------------------ checks
    def _find_change(self, reopened: bool = True) -> str | None:
        """What changed, as one line, or None; ``reopened``: the re-opened files too (a stat each)."""
        for n in self._mapped:
            if _identity(os.fstat(self._fds[n])) != self._ids[n]:
                return _changed(self.files[n])
        if not reopened:
            return None
        self._reopened_checked = time.monotonic()
        for n in self._reopened:
            f = self.files[n]
            try:
                now = _identity(os.stat(f.path))
            except OSError:
                return f"{f.what} {f.path} is gone (moved or removed) since the service loaded it"
            if now != self._ids[n]:
                return f"{f.what} {f.path} was changed or replaced since the service loaded it; restart the service"
        return None

    def problem(self) -> str | None:
        """Why the service cannot search (one line), or None when every file is as loaded (for ``/healthz``)."""
        return self._problem or (self._find_change() if self.files else None)

    def _check(self, reopened: bool) -> None:
        if self._problem is not None:
            raise FilesChanged(self._problem)
        problem = self._find_change(reopened)
        if problem is None and self._lease_broken:
            problem = self._renew_leases()
        if problem is not None:
            self._problem = problem
            logger.error("refusing searches: %s", problem)
            raise FilesChanged(problem)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the files for one search: `FilesChanged` before it (nothing is read) or after it (its
        result must be dropped) when a file is not as loaded. The mapped files are checked every time;
        the re-opened ones at most every ``recheck_seconds`` and whenever the search fails."""
        if not self.files:
            yield
            return
        with self._lock:
            # a stat per re-opened file costs ~20 us on a busy CPU: for 1,000 shards, once a second
            self._check(reopened=time.monotonic() - self._reopened_checked >= self.recheck_seconds)
            try:
                yield
            except Exception:
                self._check(reopened=True)  # a read that failed because a file changed under it: that change's 503
                raise
            self._check(reopened=False)

    # ------------------------------------------------------------------------------------ leases
    def take_leases(self) -> int:
        """Put a read lease on every file (Linux; main thread only: it installs a SIGIO handler).

        Returns how many files got one; a file without one is logged and is guarded by the checks alone.
        """
        if fcntl is None or not self.files or threading.current_thread() is not threading.main_thread():
            return 0
        self._previous_handler = signal.signal(signal.SIGIO, self._lease_break)
        for n, (f, fd) in enumerate(zip(self.files, self._fds)):
            if fd < 0:
                continue
            try:
                fcntl(fd, F_SETLEASE, F_RDLCK)
                self._leased[n] = self._wanted[n] = True
            except OSError as err:
                logger.warning("no read lease on %s %s (%s): a change to it is caught before and after each "
                               "search, not while one runs", f.what, f.path, os.strerror(err.errno or 0))
        return sum(self._leased)

    def _lease_break(self, signum: int, frame: Any) -> None:
        """SIGIO: a process wants to write or truncate a leased file. Let go once no search reads it."""
        with self._lock:  # waits for the search in flight (it runs in another thread)
            for n, fd in enumerate(self._fds):
                if self._leased[n] and fcntl(fd, F_GETLEASE) != F_RDLCK:
                    fcntl(fd, F_SETLEASE, F_UNLCK)
                    self._leased[n] = False
                    self._lease_broken = True

    def _renew_leases(self) -> str | None:
        """After a lease break, the file may be unchanged (the writer gave up): take the lease again."""
        for n, (f, fd) in enumerate(zip(self.files, self._fds)):
            if self._leased[n] or not self._wanted[n]:
                continue
            try:
                fcntl(fd, F_SETLEASE, F_RDLCK)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):  # a writer has it open: it is being changed
                    return _changed(f)
                return f"{f.what} {f.path} cannot be leased again ({os.strerror(err.errno or 0)})"
            self._leased[n] = True
        self._lease_broken = False
        return self._find_change(reopened=False)

    def close(self) -> None:
        """Give the leases and descriptors back (and the SIGIO handler, if `take_leases` set it)."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGIO, self._previous_handler)
            self._previous_handler = None
        for fd in self._fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)  # closing the descriptor ends its lease
        self._fds = []
