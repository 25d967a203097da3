"""The documentation site builds with ``mkdocs build --strict`` (skipped without the docs extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install 'uit_reid[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("sdm_loss", "cmt_loss", "GalleryIndex", "CLIPDualEncoder", "TIRHead", "UITModel", "Trainer",
                 "load_dataset", "evaluate", "convert_model", "render_model_card"):
        assert name in api, f"{name} missing from the API page"
    for page in ("concepts", "training", "search", "pretrained", "distributed", "custom_loop", "faq", "benchmarks"):
        assert (site / page / "index.html").is_file(), page
