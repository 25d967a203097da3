"""`uit-reid encode`: shards equal a direct encode, any world size writes the same files, kills resume.

Real processes throughout: the CLI in-process, torchrun with two gloo ranks, and SIGKILLed subprocesses.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uit_reid.augment import build_eval_transform
from uit_reid.cli import main
from uit_reid.factory import load_model
from uit_reid.images import load_image
from uit_reid.retrieval import list_images
from uit_reid.retrieval.shards import EmbeddingShards, ShardFormatError

ROOT = Path(__file__).resolve().parents[2]
SHARD = 5


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> dict[str, Path]:
    """A tiny saved model and 23 images (one of them unreadable) in nested folders."""
    from uit_reid import CLIPDualEncoder, UITModel

    base = tmp_path_factory.mktemp("shards")
    torch.manual_seed(0)
    encoder = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(96, 32))
    UITModel(encoder, num_classes=0, tir_head=False).save_pretrained(base / "model")
    rng = np.random.default_rng(0)
    images = base / "images"
    for i in range(22):
        sub = images / f"cam{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + i, 20, 3), dtype=np.uint8)).save(sub / f"{i:03d}.png")
    (images / "cam1" / "007b.jpg").write_bytes(b"not a jpeg at all")
    ref = base / "ref"
    assert main(["encode", "--model", str(base / "model"), "--images", str(images), "--out", str(ref),
                 "--shard-size", str(SHARD), "--workers", "0", "--device", "cpu"]) == 0
    return {"model": base / "model", "images": images, "ref": ref, "base": base}


def _cmd(gallery: dict[str, Path], out: Path) -> list[str]:
    return ["encode", "--model", str(gallery["model"]), "--images", str(gallery["images"]),
            "--out", str(out), "--shard-size", str(SHARD), "--workers", "0", "--device", "cpu"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _assert_same_shards(a: Path, b: Path) -> None:
    x, y = EmbeddingShards(a), EmbeddingShards(b)
    assert x.num_shards == y.num_shards and x.rows == y.rows
    for n in range(x.num_shards):
        assert x.ids(n) == y.ids(n)
        assert (a / "metadata" / f"metadata_{n:05d}.parquet").read_bytes() == (
            b / "metadata" / f"metadata_{n:05d}.parquet"
        ).read_bytes()
        np.testing.assert_allclose(x.vectors(n).astype(np.float32), y.vectors(n).astype(np.float32), rtol=0,
                                   atol=2e-3)  # float16 rounding of unit vectors (|x| <= 1: ulp <= 2**-11)
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert {k: v for k, v in ma.items() if k != "model"} == {k: v for k, v in mb.items() if k != "model"}


def test_shards_equal_a_direct_encode(gallery) -> None:
    shards = EmbeddingShards(gallery["ref"])
    files = [str(p) for p in list_images(gallery["images"])]
    assert shards.num_shards == 5 and len(shards) == 22  # 23 files, one unreadable
    manifest = shards.manifest
    assert manifest["complete"] and manifest["encoded"] == 22 and manifest["skipped"] == 1 and manifest["dim"] == 128
    bad = str(gallery["images"] / "cam1" / "007b.jpg")
    logs = [json.loads(p.read_text()) for p in sorted((gallery["ref"] / "logs").glob("log_*.json"))]
    assert [log["skipped"] for log in logs].count([bad]) == 1 and sum(len(log["skipped"]) for log in logs) == 1
    assert [log["images"] for log in logs] == [5, 5, 5, 5, 3]
    ids = [i for n in range(shards.num_shards) for i in shards.ids(n)]
    assert ids == [f for f in files if f != bad]
    model = load_model(gallery["model"])
    transform = build_eval_transform(model.image_size, interpolation=model.interpolation)
    with torch.no_grad():
        direct = torch.cat([model.encode_image(transform(load_image(p))[None], normalize=True) for p in ids]).numpy()
    stored = np.concatenate([shards.vectors(n) for n in range(shards.num_shards)])
    assert stored.dtype == np.float16
    np.testing.assert_allclose(stored.astype(np.float32), direct, rtol=0, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(stored.astype(np.float32), axis=1), 1.0, atol=2e-3)
    np.testing.assert_array_equal(shards.rows_of(np.array([[21, 0], [5, 4]])),
                                  stored[[[21, 0], [5, 4]]].astype(np.float32))


def test_two_torchrun_ranks_write_the_same_shards_as_one(gallery, tmp_path) -> None:
    out = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "uit_reid.cli", *_cmd(gallery, out)],
        env=_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("encoded 22 images (1 unreadable, skipped) into 5 shards") == 1  # rank 0 only
    _assert_same_shards(gallery["ref"], out)
    logs = [json.loads(p.read_text()) for p in sorted((out / "logs").glob("log_*.json"))]
    assert [log["rank"] for log in logs] == [0, 1, 0, 1, 0]  # each shard written once, by its own rank


def test_sigkill_then_resume_equals_an_uninterrupted_run(gallery, tmp_path) -> None:
    """Kill real encode processes at random instants, then complete the run: the same files result."""
    out = tmp_path / "killed"
    pick = random.Random(19)
    cmd = [sys.executable, "-m", "uit_reid.cli", *_cmd(gallery, out)]
    partial = 0
    for _ in range(2):
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        done_before = len(list(out.glob("logs/log_*.json")))
        target = min(5, done_before + pick.randint(0, 2))  # kill after a random number of new shards ...
        deadline = time.monotonic() + 120
        while len(list(out.glob("logs/log_*.json"))) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(pick.uniform(0.0, 0.3))  # ... plus a random instant
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial += proc.returncode == -signal.SIGKILL
        for p in out.rglob("*.tmp"):  # a kill mid-write leaves at most a hidden temporary file
            assert p.name.startswith(".")
        if (out / "manifest.json").exists() and not json.loads((out / "manifest.json").read_text())["complete"]:
            with pytest.raises(ShardFormatError, match="incomplete"):
                EmbeddingShards(out)
    assert partial >= 1  # at least one kill landed mid-run
    done = {p: p.stat().st_mtime_ns for p in out.glob("img_emb/*.npy")
            if (out / "logs" / p.name.replace("img_emb_", "log_").replace(".npy", ".json")).exists()}
    assert main(_cmd(gallery, out)) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # complete shards were not redone
    _assert_same_shards(gallery["ref"], out)


def test_resume_refuses_another_run(gallery, tmp_path, capsys) -> None:
    out = tmp_path / "other"
    shutil.copytree(gallery["ref"], out)
    assert main([*_cmd(gallery, out)[:-6], "--shard-size", "4", "--workers", "0", "--device", "cpu"]) == 1
    assert f"uit-reid: error: {out} holds shards of another run (shard_size: 5 there, 4 now); use a new --out folder" in (
        capsys.readouterr().err
    )
    (gallery["base"] / "stray").mkdir(exist_ok=True)
    (gallery["base"] / "stray" / "x.txt").write_text("x")
    assert main(_cmd(gallery, gallery["base"] / "stray")) == 1
    assert "is not empty and has no manifest.json" in capsys.readouterr().err


def test_a_hostile_shard_is_refused(gallery, tmp_path) -> None:
    out = tmp_path / "bad"
    shutil.copytree(gallery["ref"], out)
    np.save(out / "img_emb" / "img_emb_00001.npy", np.zeros((5, 128, 2), np.float16))
    with pytest.raises(ShardFormatError, match="expected a 2-D float16/float32 C-order array"):
        EmbeddingShards(out)
    np.save(out / "img_emb" / "img_emb_00001.npy", np.zeros((4, 128), np.float16))
    with pytest.raises(ShardFormatError, match="row counts differ from the manifest"):
        EmbeddingShards(out)
    np.save(out / "img_emb" / "img_emb_00001.npy", np.array([b"x"] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(ShardFormatError, match="expected a 2-D"):
        EmbeddingShards(out)


def test_a_second_encode_into_a_held_folder_refuses_at_once(gallery, tmp_path) -> None:
    """Two real processes: this one holds the output folder, the CLI in a subprocess refuses, naming it."""
    from uit_reid.io import FolderLock

    out = tmp_path / "held"
    with FolderLock(out, "test"):
        proc = subprocess.run([sys.executable, "-m", "uit_reid.cli", *_cmd(gallery, out)], env=_env(),
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"{out} is in use by another uit-reid encode (pid {os.getpid()} on " in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written, and the holder's lock released
    assert main(_cmd(gallery, out)) == 0  # free again: the same command runs
    _assert_same_shards(out, gallery["ref"])
