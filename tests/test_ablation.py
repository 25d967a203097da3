"""`benchmarks/ablation.py`: the smoke run writes every row, shares the runs of equal recipes, and its
diagnostics see the grey TIR input; the confidence interval against an independent computation."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _module():
    spec = importlib.util.spec_from_file_location("ablation", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_confidence_interval_is_the_t_interval_of_the_mean() -> None:
    ci = _module().confidence_interval
    values = [61.0, 64.5, 59.0, 66.0, 62.5]
    mean, half = ci(values)
    # t(0.975, 4 degrees of freedom) = 2.776 (any statistics table)
    assert mean == pytest.approx(62.6) and half == pytest.approx(2.776 * statistics.stdev(values) / math.sqrt(5))
    assert ci([3.0, 3.0])[1] == 0.0 and math.isnan(ci([7.0])[1])


def test_recipes_switch_exactly_their_parts() -> None:
    ab = _module()
    full = {"sdm": 1.0, "id": 1.0, "cmt": 10.0, "tir": 10.0}
    assert ab.recipe(ab.ROWS["SDM + ID"], full) == {
        "loss.itc": 0.0, "loss.sdm": 1.0, "loss.id": 1.0, "loss.cmt": 0.0, "loss.tir": 0.0, "model.tir_head": False,
        "data.text_augment_p": 0.0, "data.token_corruption": False}
    every = ab.recipe(ab.ROWS["full UIT"], full)
    for name, parts in ab.ROWS.items():
        if name.startswith("full UIT - "):
            differs = {k for k, v in ab.recipe(parts, full).items() if v != every[k]}
            assert len(differs) in (1, 2), name  # one component (TIR: its weight and the head)
    assert ab.ROWS["full UIT - caption corruption"] == ab.ROWS["+ text augmentation"]


def test_lookalikes_are_the_people_within_two_attribute_slots() -> None:
    from uit_reid.data.records import PersonRecord, Split

    ab = _module()
    base = {"skin": "light", "hair_colour": "black", "hair_length": "short", "upper_type": "jacket",
            "upper_colour": "red", "lower_type": "trousers", "lower_colour": "blue", "shoes_colour": "black",
            "bag": None, "bag_colour": None, "hat_colour": None}
    people = {
        0: base,
        1: {**base, "upper_colour": "green", "bag": "backpack", "bag_colour": "red"},  # two slots (the bag is one): a look-alike of 0
        2: {**base, "upper_colour": "green", "lower_colour": "red", "hat_colour": "white"},  # three slots from 0 and from 1
        3: {**base, "skin": "dark", "hair_colour": "blonde", "hair_length": "long"},  # three slots from 0
        4: {**base, "skin": "dark", "hair_colour": "blonde", "hair_length": "long", "shoes_colour": "white"},  # one from 3
    }
    records = [PersonRecord(Path(f"{pid}.png"), pid, ["a person"], i, attrs) for i, (pid, attrs) in enumerate(people.items())]
    split = Split("test", records)
    assert ab.lookalike_pids(split) == {0, 1, 3, 4}
    assert ab.lookalike_pids(split, max_changes=3) == {0, 1, 2, 3, 4}
    assert ab.lookalike_pids(split, max_changes=0) == set()


def test_quick_run_writes_the_table_and_the_diagnostics(tmp_path) -> None:
    rows = "zero-shot,+ text augmentation,full UIT,full UIT - caption corruption"
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--pretrained", "none", "--rows", rows,
                          "--out", str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert list(report["summary"]) == rows.split(",")
    assert [len(report["runs"][r]) for r in rows.split(",")] == [1, 2, 2, 2]
    # the same recipe under two names is trained once
    assert report["runs"]["full UIT - caption corruption"] == report["runs"]["+ text augmentation"]
    full = report["runs"]["full UIT"]
    mean, half = _module().confidence_interval([r["binding"] for r in full])
    assert report["summary"]["full UIT"]["binding"] == {"mean": mean, "ci95": half}
    assert {"R1", "mAP", "binding", "presence", "binding_n"} <= set(full[0])
    gray = report["diagnostics"]["grayscale_input"]
    assert gray["patch_embedding_calls"] == 2 and gray["tir_pass_channel_spread"] == 0.0
    assert gray["retrieval_pass_channel_spread"] > 0.1
    # each row with a TIR decoder reports its text use; the look-alike R1 is measured on every row
    assert {"text_use", "tir_error_true", "tir_error_swapped", "R1_lookalike", "R1_lookalike_n"} <= set(full[0])
    assert set(report["summary"]["full UIT"]) == set(_module().METRICS)
    assert sorted(f.name for f in tmp_path.glob("tir_*.png")) == ["tir_full_uit.png", "tir_text_augmentation.png"]
    table = (tmp_path / "ablation.md").read_text()
    assert "| full UIT | " in table and table in run.stdout
