"""The trainer for real: exact resume after SIGKILL, NaN handling, torchrun with gloo, exports."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from uit_reid import UITModel
from uit_reid.checkpoint import load_checkpoint
from uit_reid.data import load_dataset
from uit_reid.evaluation import BINDING_KEYS, TEXT_USE_KEYS, evaluate_binding
from uit_reid.factory import load_model
from uit_reid.train import NonFiniteLossError, TrainConfig, Trainer

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _write_config(path: Path, config: dict) -> Path:
    path.write_text(TrainConfig.from_dict(config).to_toml())
    return path


def _train_cmd(config_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uit_reid.cli", "train", "--config", str(config_path), *extra]


def _model_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "last.pt")["model"]


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_dataset, tmp_path, config_dict) -> None:
    settings = {"checkpoint_every_steps": 1}
    full_cfg = _write_config(tmp_path / "full.toml", config_dict(tiny_dataset, tmp_path / "full", **settings))
    killed_dir = tmp_path / "killed"
    killed_cfg = _write_config(tmp_path / "killed.toml", config_dict(tiny_dataset, killed_dir, **settings))

    subprocess.run(_train_cmd(full_cfg), check=True, env=ENV, capture_output=True, timeout=600)

    proc = subprocess.Popen(_train_cmd(killed_cfg), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        last = killed_dir / "last.pt"
        if last.exists():
            try:
                step = load_checkpoint(last)["step"]
            except ValueError:  # never half-written: the rename is atomic, but be explicit
                step = -1
            if step >= 3:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run ended before it could be killed"
    state = load_checkpoint(killed_dir / "last.pt")
    steps_per_epoch = 8  # 16 train ids x 2 images x 2 captions / batch 8
    assert state["step"] < 2 * steps_per_epoch, "killed run must not have finished"

    subprocess.run(_train_cmd(killed_cfg, "--resume"), check=True, env=ENV, capture_output=True, timeout=600)
    full, resumed = _model_state(tmp_path / "full"), _model_state(killed_dir)
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), f"{key} differs after resume (killed at step {killed_at})"
    assert load_checkpoint(killed_dir / "last.pt")["step"] == load_checkpoint(tmp_path / "full" / "last.pt")["step"]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path, config_dict) -> None:
    run_dir = tmp_path / "run"
    good = TrainConfig.from_dict(config_dict(tiny_dataset, run_dir, max_steps=2, checkpoint_every_steps=1))
    Trainer(good).fit()
    before = (run_dir / "last.pt").read_bytes()
    assert load_checkpoint(run_dir / "last.pt")["step"] == 2
    bad = TrainConfig.from_dict(config_dict(tiny_dataset, run_dir, max_steps=4, checkpoint_every_steps=1))
    bad.loss.logit_scale = 1e39  # finite, so accepted, but inf in float32 (NaN itself is refused by the model)
    trainer = Trainer(bad, resume=True)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2 .*last.pt holds the state at step 2"):
        trainer.fit()
    assert (run_dir / "last.pt").read_bytes() == before


def test_under_torchrun_the_trainer_wants_the_process_group_made_by_the_entry_point(
    tiny_dataset, tmp_path, config_dict, monkeypatch
) -> None:
    """A library object never creates the process group: without one under torchrun it says who should."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = TrainConfig.from_dict(config_dict(tiny_dataset, tmp_path / "run", max_steps=1))
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2: .*no process group; call uit_reid.distributed.init_from_torchrun"):
        Trainer(config)
    assert not (tmp_path / "run").exists()


def test_the_run_logs_to_out_log_and_takes_its_handler_away_after(tiny_dataset, tmp_path, config_dict, caplog) -> None:
    """``out.log`` beside ``metrics.jsonl``: timestamped lines of the ``uit_reid`` loggers; no handler is left behind."""
    caplog.set_level(logging.INFO, logger="uit_reid")  # what `uit-reid train` sets
    package = logging.getLogger("uit_reid")
    before = list(package.handlers)
    run_dir = tmp_path / "run\n2026-01-01 00:00:00,000 | INFO | uit_reid | forged"  # a name that forged a record
    Trainer(TrainConfig.from_dict(config_dict(tiny_dataset, run_dir, max_steps=1, epochs=1))).fit()
    assert package.handlers == before
    assert (run_dir / "metrics.jsonl").is_file()
    lines = (run_dir / "out.log").read_text(encoding="utf-8").splitlines()
    record = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \| (DEBUG|INFO|WARNING|ERROR) \| uit_reid[.\w]* \| ")
    assert lines and all(record.match(line) for line in lines), [line for line in lines if not record.match(line)]
    assert any("run\\x0a2026-01-01" in line for line in lines)  # the name is logged, escaped
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines)  # and forges no record
    test_line = next(line for line in lines if " | uit_reid.train.trainer | test (" in line)
    assert record.match(test_line) and "R1 " in test_line
    logging.getLogger("uit_reid.probe").info("after the run")
    assert "after the run" not in (run_dir / "out.log").read_text(encoding="utf-8")


def test_fit_writes_the_run_files_and_exports_the_best_model(tiny_config, independent_metrics) -> None:
    tiny_config.train.epochs = 3
    tiny_config.train.seed = 2  # with this seed val R1 peaks at epoch 1 (31.25, 43.75, 31.25): best/ is not the last
    result = Trainer(tiny_config).fit()
    run_dir = Path(tiny_config.train.output_dir)
    assert result["model_dir"] == str(run_dir / "best")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the synthetic records carry attributes, so the test figures include attribute binding
    assert {"R1", "R5", "R10", "mAP", "mINP", "binding", "binding_n", "presence", *TEXT_USE_KEYS} <= set(metrics)
    assert set(metrics) <= {"R1", "R5", "R10", "mAP", "mINP", *BINDING_KEYS, *TEXT_USE_KEYS} and metrics == result["test"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "split" not in r]
    assert [r["step"] for r in train_records] == list(range(1, result["steps"] + 1))
    assert {"loss", "sdm", "id", "cmt", "tir", "itc", "lr", "images_per_s"} <= set(train_records[0])
    assert [r["split"] for r in records if "split" in r] == ["val", "val", "val", "test"]
    val = [r for r in records if r.get("split") == "val"]
    best_val = max(val, key=lambda r: r["R1"])  # the first of equals: a later tie does not replace best/
    assert result["val_best_R1"] == best_val["R1"]
    assert best_val is not val[-1], "precondition: the best val epoch must not be the last one"
    # the exported model reproduces the trainer's figures: an independent evaluation of best/
    dataset = load_dataset(tiny_config.data.root, progress=False)
    model = load_model(run_dir / "best")
    for split, reported in (("test", metrics), ("val", best_val)):
        again = independent_metrics(model, getattr(dataset, split), tiny_config.data.interpolation)
        assert again["R1"] == pytest.approx(reported["R1"], abs=1e-9)
        assert {k: round(v, 4) for k, v in again.items()} == {k: round(reported[k], 4) for k in again}
        binding = evaluate_binding(model, getattr(dataset, split))
        assert binding and {k: v for k, v in reported.items() if k in BINDING_KEYS} == pytest.approx(binding, abs=1e-6)
    # and last.pt holds the final weights, which scored the last val figures
    last = independent_metrics(load_model(run_dir / "last.pt"), dataset.val, tiny_config.data.interpolation)
    assert {k: round(v, 4) for k, v in last.items()} == {k: round(val[-1][k], 4) for k in last}


def test_select_on_test_records_both_figures_labelled(tiny_dataset, tmp_path, config_dict) -> None:
    config = TrainConfig.from_dict(config_dict(tiny_dataset, tmp_path / "run", select_on_test=True))
    result = Trainer(config).fit()
    run_dir = tmp_path / "run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [r for r in records if r.get("split") == "test_per_epoch"]
    assert [r["epoch"] for r in per_epoch] == [0, 1]
    best = max(per_epoch, key=lambda r: r["R1"])
    chosen = metrics["selected_on_test"]
    assert chosen["protocol"].startswith("authors' protocol") and "optimistic" in chosen["protocol"]
    assert (chosen["epoch"], chosen["R1"], chosen["mAP"]) == (best["epoch"], best["R1"], best["mAP"])
    # the val-selected figure stays the headline
    assert {k: v for k, v in metrics.items() if k != "selected_on_test"} == result["test"]
    assert (run_dir / "best_test" / "model.safetensors").is_file() and (run_dir / "best").is_dir()


def test_no_val_split_keeps_the_last_model(tiny_dataset, tmp_path, config_dict) -> None:
    dataset = load_dataset(tiny_dataset, progress=False)
    dataset.val = None
    config = TrainConfig.from_dict(config_dict(tiny_dataset, tmp_path / "run", max_steps=2))
    result = Trainer(config, dataset=dataset).fit()
    assert result["model_dir"].endswith("last") and "val_best_R1" not in result
    assert not (tmp_path / "run" / "best").exists()
    assert isinstance(UITModel.from_pretrained(result["model_dir"]), UITModel)
    # a fresh run in the same folder needs overwrite=True and starts a fresh log (a resumed one appends)
    with pytest.raises(FileExistsError, match=f"run folder {tmp_path / 'run'} is not empty"):
        Trainer(config, dataset=dataset)
    Trainer(config, dataset=dataset, overwrite=True).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "split" not in r] == [1, 2]


def _train_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "split" not in r]


@pytest.mark.slow
def test_two_process_torchrun_gloo_run_equals_one_process_with_the_global_batch(
    tiny_dataset, tmp_path, config_dict
) -> None:
    """2 ranks x batch 4 train exactly like 1 process x batch 8: same logged losses, same final weights.

    What makes it hold: the random batch sampler deals the rows of each global batch to the ranks (the
    same set of samples, in another order), augmentation is seeded per (seed, epoch, sample), the
    batch-level losses see the gathered global batch and DDP averages the gradients. TIR is off: its
    masks come from each process's own RNG stream (seeded ``seed + rank``), so with TIR the two runs
    see different masks (the gradient identity with equal masks is checked in tests/test_distributed.py).
    Token corruption is off for the same reason: its generator is seeded per *batch* (from the batch's
    sample seeds), so a rank's half-batch draws differently from the whole batch.
    The remaining difference is the order of float32 sums over a reordered batch: measured 1e-7
    (weights, absolute) and 3e-7 (losses, relative) after 3 steps, 10x inside the tolerances.
    """

    def config(out: Path, batch_size: int) -> dict:
        cfg = config_dict(tiny_dataset, out, max_steps=3)
        cfg["model"]["tir_head"] = False
        cfg["loss"]["tir"] = 0.0
        cfg["data"].update(batch_size=batch_size, sampler="random", token_corruption=False)
        return cfg

    one_cfg = _write_config(tmp_path / "one.toml", config(tmp_path / "one", 8))
    two_cfg = _write_config(tmp_path / "two.toml", config(tmp_path / "two", 4))
    subprocess.run(_train_cmd(one_cfg), check=True, env=ENV, capture_output=True, timeout=600)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "uit_reid.cli", "train", "--config", str(two_cfg)]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    one, two = _train_records(tmp_path / "one"), _train_records(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        for name in ("loss", "sdm", "id", "cmt", "itc"):
            assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-6), (a["step"], name, a[name], b[name])
    checkpoint = load_checkpoint(tmp_path / "two" / "last.pt")
    assert checkpoint["world_size"] == 2 and checkpoint["step"] == 3 and len(checkpoint["rng"]) == 2
    expected = _model_state(tmp_path / "one")
    got = checkpoint["model"]
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


def test_report_to_tensorboard_and_wandb_offline(tiny_dataset, tmp_path, config_dict, monkeypatch) -> None:
    """The reporters named in train.report_to get the same numbers as metrics.jsonl; none by default."""
    tb = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    config = TrainConfig.from_dict(config_dict(tiny_dataset, run_dir, max_steps=2, report_to=["tensorboard", "wandb"]))
    Trainer(config).fit()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = tb.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in records if "split" not in r]
    test = [r for r in records if r.get("split") == "test"][0]
    assert events.Scalars("test/R1")[0].value == pytest.approx(test["R1"])
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))

    plain = tmp_path / "plain"
    Trainer(TrainConfig.from_dict(config_dict(tiny_dataset, plain, max_steps=1))).fit()
    assert not (plain / "tensorboard").exists() and not (plain / "wandb").exists()
