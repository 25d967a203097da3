"""`benchmarks/serve.py` (the load test the docs cite) runs against a real service and checks its answers."""

from __future__ import annotations

import json
import subprocess
import sys

from live_server import ROOT, serve_env

SCRIPT = ROOT / "benchmarks" / "serve.py"


def test_load_benchmark_reports_every_row(gallery, tmp_path) -> None:
    out = tmp_path / "serve.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--index", str(gallery["index"]), "--model", str(gallery["model"]),
         "--requests", "24", "--clients", "1,4", "--repeats", "1", "--warmup", "4", "--k", "3",
         "--configs", "default,no-batching", "--goal", "0", "--json", str(out)],
        env=serve_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["service"], r["clients"]): r for r in report["rows"]}
    assert set(rows) == {("default", 1), ("default", 4), ("no-batching", 1), ("no-batching", 4)}
    for row in rows.values():
        assert row["requests"] == 24 and row["queries_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    # one client never has company; the unbatched service encodes one query per call
    assert rows[("default", 1)]["mean_batch"] == 1.0 and rows[("no-batching", 4)]["mean_batch"] == 1.0
    assert "| micro-batching (default) | 4 |" in run.stdout and "(goal 0x): met" in run.stdout
    assert list(tmp_path.iterdir()) == [out]  # nothing else written where it ran


def test_unknown_configuration_is_named(tmp_path) -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), "--configs", "default,turbo"], env=serve_env(),
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 2
    assert "--configs: unknown configuration 'turbo'; known: default, no-batching, one-thread" in run.stderr
