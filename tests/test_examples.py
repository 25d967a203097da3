"""Run every script in examples/ as a user would, with the small settings CI uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def run_example(name: str, out: Path, *args: str) -> str:
    env = {**os.environ, "UIT_EXAMPLES_SMALL": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    # One intra-op thread unless told otherwise: on a busy 2-core runner, two OpenMP threads per
    # process were ~30x slower than one for these tiny models.
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--out", str(out), *args],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_examples_have_docstrings_and_are_documented() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    scripts = sorted(EXAMPLES.glob("0*.py"))
    assert [p.name[:3] for p in scripts] == ["01_", "02_", "03_", "04_"]
    for path in scripts:
        source = path.read_text(encoding="utf-8")
        assert source.startswith('"""'), f"{path.name} has no module docstring"
        assert "UIT_EXAMPLES_SMALL" in source
        assert path.name in readme


def test_01_losses_in_your_loop(tmp_path: Path) -> None:
    stdout = run_example("01_losses_in_your_loop.py", tmp_path)
    records = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)) and records
    for key in ("loss", "sdm", "id", "cmt", "itc", "tir"):
        assert key in records[-1] and records[-1][key] == records[-1][key]  # present and not NaN
        assert f"{key}=" in stdout


def test_02_train_synthetic(tmp_path: Path) -> None:
    stdout = run_example("02_train_synthetic.py", tmp_path)
    run = tmp_path / "run"
    for name in ("config.toml", "metrics.jsonl", "last.pt", "metrics.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert "test (t2i)" in stdout and all(k in stdout for k in METRIC_KEYS)


def test_03_index_and_search(tmp_path: Path) -> None:
    stdout = run_example("03_index_and_search.py", tmp_path)
    assert (tmp_path / "gallery.faiss").is_file() and not (tmp_path / "gallery.faiss.json").exists()
    grids = sorted(tmp_path.glob("results_*.png"))
    assert len(grids) == 2
    from PIL import Image

    with Image.open(grids[0]) as im:
        assert im.width > 100 and im.height > 100
    assert "indexed 48 images" in stdout and "query 0:" in stdout


def test_04_evaluate_checkpoint(tmp_path: Path) -> None:
    stdout = run_example("04_evaluate_checkpoint.py", tmp_path)
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert set(rows) == {"text-to-image", "image-to-text"}
    for metrics in rows.values():
        assert set(METRIC_KEYS) <= set(metrics)
        assert all(0.0 <= metrics[k] <= 100.0 for k in METRIC_KEYS)
    assert "text-to-image" in stdout and "last.pt" in stdout
