"""`uit-reid serve` in a child process: started on a free loopback port, ready when `/healthz` answers.

For notebooks, scripts and load tests that want a real service beside them::

    with ServeProcess(["--index", "gallery.faiss", "--model", "runs/demo/best"], log="serve.log") as srv:
        urllib.request.urlopen(srv.url + "/search?q=a+man+in+a+red+jacket")
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ServeProcess", "free_port", "serve_command"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve_command(serve_args: Sequence[str], port: int) -> list[str]:
    """The command line of `uit-reid serve SERVE_ARGS --port PORT`, run with this Python."""
    return [sys.executable, "-m", "uit_reid.cli", "serve", *serve_args, "--port", str(port)]


class ServeProcess:
    """`uit-reid serve SERVE_ARGS --port PORT` as a child process; ``url`` is its loopback address.

    Args:
        serve_args: the arguments after ``serve`` (``--index``, ``--model``, limits, ...).
        log: file that receives the process's output (created or replaced).
        env: the child's environment (default: this process's).
        cwd: the child's working directory.
        port: the port (default: a free one).
        startup_timeout: seconds to wait for ``/healthz``; the process is stopped if it does not answer.

    Raises RuntimeError, with the end of the log, when the process exits or stays silent.
    """

    def __init__(
        self,
        serve_args: Sequence[str],
        *,
        log: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        port: int | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log)
        self.command = serve_command(serve_args, self.port)
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(self.command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env=dict(env) if env is not None else None, cwd=cwd)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log_file.close()
                raise RuntimeError(f"uit-reid serve exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                self.get_json("/healthz", timeout=2.0)
                return
            except (OSError, ValueError):  # not listening yet (or not answering JSON yet)
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"uit-reid serve did not answer within {startup_timeout:g} s:\n{self._log_tail()}")

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        """The JSON answer of ``GET path`` (raises for a non-2xx status)."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read())

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        if not self._log_file.closed:
            self._log_file.close()

    def _log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
