"""Imports on every platform (issue 30, item 3): no Unix-only module is imported at the top of the library.

Windows has no ``fcntl`` and no ``resource``; a subprocess whose ``sys.modules`` blocks both stands in
for it (the suite runs on Linux only, see the README).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["uit_reid", "uit_reid.io", "uit_reid.model", "uit_reid.factory", "uit_reid.train", "uit_reid.cli",
           "uit_reid.retrieval", "uit_reid.serve.server"]
PROGRAM = f"""
import importlib, sys
for name in ("fcntl", "resource"):
    sys.modules[name] = None  # 'import fcntl' now raises ImportError, as on Windows
for name in ("fcntl", "resource"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise SystemExit(name + " is still importable: the block does not work")
for module in {MODULES!r}:
    importlib.import_module(module)
from uit_reid.serve.server import connection_budget
print("ok", connection_budget() > 0)
"""


def test_the_library_imports_without_fcntl_and_resource() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", "True"]
