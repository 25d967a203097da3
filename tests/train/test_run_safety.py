"""Never lose a user's run or data: used run folders, corrupted checkpoints, bad configs and checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import torch

from uit_reid.checkpoint import CheckpointError, load_checkpoint, previous_checkpoint
from uit_reid.cli import main
from uit_reid.data import AnnotationError, load_dataset, make_synthetic
from uit_reid.train import NonFiniteLossError, TrainConfig, Trainer

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_train_into_a_used_run_folder_refuses(tiny_dataset, tmp_path, config_dict) -> None:
    run = tmp_path / "run"
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TrainConfig.from_dict(config_dict(tiny_dataset, run, max_steps=1, epochs=1)).to_toml())
    assert main(["train", "--config", str(config_path)]) == 0
    before = _tree(run)
    assert "last.pt" in before and "metrics.jsonl" in before
    cmd = [sys.executable, "-m", "uit_reid.cli", "train", "--config", str(config_path)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and _tree(run) == before  # nothing replaced, nothing deleted
    err = done.stderr.strip().splitlines()[-1]
    assert err.startswith(f"uit-reid: error: run folder {run} is not empty (")
    assert "pass --resume to continue that run or --overwrite to replace it" in err
    assert main(["train", "--config", str(config_path), "--overwrite"]) == 0
    assert main(["train", "--config", str(config_path), "--resume"]) == 0  # nothing left to do, but allowed


def _flip_a_data_byte(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little"), int.from_bytes(
        raw[info.header_offset + 28 : info.header_offset + 30], "little"
    )
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def test_corrupted_checkpoint_is_refused_and_the_previous_one_kept(tiny_dataset, tmp_path, config_dict) -> None:
    run = tmp_path / "run"
    config = TrainConfig.from_dict(config_dict(tiny_dataset, run, max_steps=2, epochs=1, checkpoint_every_steps=1))
    Trainer(config).fit()
    last, prev = run / "last.pt", previous_checkpoint(run / "last.pt")
    assert prev == run / "last.prev.pt" and prev.is_file()
    assert load_checkpoint(prev)["step"] <= load_checkpoint(last)["step"] == 2
    _flip_a_data_byte(last)
    message = rf"checkpoint {last} is corrupted \(archive/data/\d+ fails its checksum\); the previous checkpoint {prev}"
    with pytest.raises(CheckpointError, match=message):
        Trainer(config, resume=True)
    with pytest.raises(CheckpointError, match="resume from it with --resume"):
        load_checkpoint(last)
    Trainer(config, resume=prev)  # the kept one works


def test_non_finite_loss_says_what_is_true(tiny_dataset, tmp_path, config_dict) -> None:
    config = TrainConfig.from_dict(config_dict(tiny_dataset, tmp_path / "run", max_steps=2, epochs=1))
    config.loss.logit_scale = 1e39  # behind the config validation's back: finite, but inf in float32 (NaN is refused)
    with pytest.raises(NonFiniteLossError, match="no checkpoint of this run was written yet") as info:
        Trainer(config).fit()
    assert "still holds" not in str(info.value) and not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.eval_every=0", "train.eval_every must be >= 1, got 0"),
        ("train.log_every=0", "train.log_every must be >= 1, got 0"),
        ("train.max_steps=-1", "train.max_steps must be >= 0 (0 = no limit), got -1"),
        ("optim.lr=fast", "optim.lr must be a finite number, got 'fast'"),
        ('data.num_workers="8"', "data.num_workers must be an integer, got '8'"),
        ("train.epochs=1.5", "train.epochs must be an integer, got 1.5"),
        ('data.batch_size="abc"', "data.batch_size must be an integer, got 'abc'"),
        ("model.image_size=[96]", "model.image_size must be a list of 2 integers, got [96]"),
        ("model.tir_head=1", "model.tir_head must be true or false, got 1"),
    ],
)
def test_config_values_checked_at_load(tiny_dataset, tmp_path, capsys, config_dict, override, message) -> None:
    tiny = tmp_path / "tiny.toml"  # a 1-step config: even if a check were missing, nothing long would run
    tiny.write_text(TrainConfig.from_dict(config_dict(tiny_dataset, tmp_path / "o", max_steps=1, epochs=1)).to_toml())
    assert main(["train", "--config", str(tiny), "--set", override]) == 1
    assert capsys.readouterr().err.strip() == f"uit-reid: error: --set {override}: {message}"
    assert not (tmp_path / "o").exists()
    section, rest = override.split(".", 1)
    key, raw = rest.split("=", 1)
    toml = tmp_path / "bad.toml"
    toml.write_text(f"[{section}]\n{key} = {raw if raw != 'fast' else json.dumps(raw)}\n")
    with pytest.raises(ValueError) as info:
        TrainConfig.from_toml(toml)
    assert str(info.value) == f"{toml}: {message}"


def test_config_types_cover_every_key() -> None:
    """Every field of every section is checked from its annotation, including keys added later."""
    import dataclasses

    from uit_reid.train.config import _SECTION_TYPES

    for section, cls in _SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            with pytest.raises(ValueError, match=f"{section}.{f.name} must be"):
                TrainConfig.from_dict({section: {f.name: {"not": "valid"}}}, source="t")


def test_bad_checkpoint_gets_our_message(tmp_path, capsys, tiny_dataset) -> None:
    pickled = tmp_path / "pickled.pt"
    torch.save({"x": PurePosixPath("code runs here")}, pickled)  # a class safe loading refuses
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    weights = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, weights)
    for path, what in [
        (pickled, "it holds Python objects that safe loading refuses"),
        (text, "not a torch zip file"),
        (weights, "no version 1 state"),
    ]:
        assert main(["evaluate", "--model", str(path), "--dataset", str(tiny_dataset)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"uit-reid: error: {path} is not a uit_reid") and what in err, err
        assert "weights_only" not in err and "\n" not in err and "a last.pt written by uit-reid train" in err


def test_synth_refuses_a_users_folder(tmp_path, capsys) -> None:
    users = tmp_path / "mine"
    (users / "imgs").mkdir(parents=True)
    (users / "annotations.jsonl").write_text('{"mine": true}\n')
    (users / "imgs" / "00000_00.png").write_bytes(b"my photo")
    before = _tree(users)
    args = ["synth", "--out", str(users), "--num-ids", "4", "--images-per-id", "1", "--num-val-ids", "1",
            "--num-test-ids", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"uit-reid: error: {users} holds files that make_synthetic did not write") and "--force" in err
    assert _tree(users) == before
    fresh = tmp_path / "fresh"
    assert main([*args[:2], str(fresh), *args[3:]]) == 0
    assert main([*args[:2], str(fresh), *args[3:]]) == 0  # its own folder: may be written again
    assert main([*args, "--force"]) == 0 and _tree(users) != before


def test_demo_config_never_writes_into_a_real_dataset(tmp_path, capsys) -> None:
    real = tmp_path / "CUHK-PEDES"
    (real / "imgs").mkdir(parents=True)
    (real / "reid_raw.json").write_text("[]")
    before = _tree(real)
    small = ["synthetic.num_ids=12", "synthetic.images_per_id=1", "synthetic.num_val_ids=2",
             "synthetic.num_test_ids=2", "train.max_steps=1", "data.batch_size=4"]  # quick even if it ran
    args = ["train", "--config", "demo", "--set", f"data.root={json.dumps(str(real))}",
            "--output-dir", str(tmp_path / "run"), *(a for o in small for a in ("--set", o))]
    assert main(args) == 1
    assert f"{real} holds files that make_synthetic did not write" in capsys.readouterr().err
    assert _tree(real) == before and sorted(p.name for p in real.iterdir()) == ["imgs", "reid_raw.json"]


def test_demo_refuses_a_foreign_output_folder(tmp_path, capsys) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    assert main(["demo", "--quick", "--out", str(out)]) == 1
    assert f"{out} is not empty and is not an earlier demo's output" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_non_utf8_annotations_named(tmp_path) -> None:
    root = make_synthetic(tmp_path / "d", num_ids=4, images_per_id=1, num_val_ids=1, num_test_ids=1, progress=False)
    lines = root.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"a ", "caf\u00e9 ".encode("latin-1"), 1)
    root.write_bytes(b"".join(lines))
    with pytest.raises(AnnotationError, match=rf"{root} is not UTF-8 text \(line 2, byte \d+: b'\\xe9'\)"):
        load_dataset(root.parent)
    array = tmp_path / "d" / "records.json"
    array.write_bytes('["caf\u00e9"]'.encode("cp1252"))
    with pytest.raises(AnnotationError, match=rf"{array} is not UTF-8 text \(byte 5"):
        load_dataset(array)
