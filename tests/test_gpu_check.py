"""`benchmarks/gpu_check.py`: a clean exit 3 without CUDA, and every part runs in the CPU dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_measures_nothing_and_exits_3() -> None:
    run = subprocess.run([sys.executable, str(SCRIPT)], env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["status"] == "no_cuda" and "rows" not in report
    assert "no CUDA device is present; nothing was measured (exit 3)" in run.stderr


@pytest.mark.slow
def test_cpu_dry_run_runs_every_part(tmp_path) -> None:
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--cpu-dry-run", "--json", str(out)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["status"] == "ok" and report["failures"] == {}
    parts = [r["part"] for r in report["rows"]]
    assert parts.count("uit_step") == 4 and parts.count("open_clip_contrastive") == 2
    assert {"inference_jpeg_end_to_end", "inference_encode_only", "torchrun_gloo_smoke", "encode_shards"} <= set(parts)
    encode = next(r for r in report["rows"] if r["part"] == "encode_shards")
    assert encode["images"] > 0 and encode["images_per_s"] > 0
    assert {(r["precision"], r["tir"]) for r in report["rows"] if r["part"] == "uit_step"} == {
        ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)}
    assert "| uit_step | bf16 | no | on |" in run.stdout
