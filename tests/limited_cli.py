"""`uit-reid ...` in a subprocess under an address-space limit (``ulimit -v``), for hostile-file tests."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 4 << 30  # enough for torch and a tiny model, far from what the hostile files declare


def run_cli_limited(args: Sequence[str], address_space: int = ADDRESS_SPACE) -> subprocess.CompletedProcess:
    """``python -m uit_reid.cli ARGS`` with RLIMIT_AS at ``address_space``; its output captured as text."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "uit_reid.cli", *args], capture_output=True, text=True,
                          timeout=300, preexec_fn=limit, env=env, cwd=ROOT)
