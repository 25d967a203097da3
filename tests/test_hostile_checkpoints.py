"""Hostile and damaged checkpoint files: a torch zip bomb and a truncated last.pt (issue 20, 7 and 10)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from limited_cli import run_cli_limited

from uit_reid.checkpoint import CheckpointError, load_checkpoint
from uit_reid.encoders import load_state_dict_file

BOMB_BYTES = 64 << 20


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A working torch file of one 64 MiB zero tensor, re-zipped with deflate: ~70 KB on disk."""
    base = tmp_path_factory.mktemp("bomb")
    plain, bomb = base / "plain.pth", base / "bomb.pth"
    torch.save({"visual.weight": torch.zeros(BOMB_BYTES, dtype=torch.uint8)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            with src.open(info) as fin, dst.open(info.filename, "w", force_zip64=True) as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
    plain.unlink()
    return bomb


def test_the_bomb_is_real(bomb) -> None:
    """The control: torch itself inflates it (so without the check every loader would)."""
    assert bomb.stat().st_size < BOMB_BYTES // 500
    assert torch.load(bomb, weights_only=True)["visual.weight"].numel() == BOMB_BYTES


def test_a_zip_bomb_is_refused_before_inflating(bomb) -> None:
    size = bomb.stat().st_size
    with pytest.raises(ValueError) as exc:
        load_state_dict_file(bomb)
    message = str(exc.value)
    assert message.startswith(f"{bomb}: its zip entries declare ") and f"the file's {size:,}; refusing to inflate" in message
    with pytest.raises(CheckpointError, match="refusing to inflate it"):
        load_checkpoint(bomb)


def test_convert_refuses_the_bomb_under_a_memory_limit(bomb, tmp_path) -> None:
    """`uit-reid convert` in a subprocess whose address space could not hold the inflated tensors twice."""
    out = tmp_path / "converted"
    run = run_cli_limited(["convert", str(bomb), "--out", str(out)])
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"uit-reid: error: {bomb}: its zip entries declare")
    assert list(out.iterdir()) == []  # the --out check made the folder; nothing was written into it


def test_an_ordinary_torch_file_is_not_taken_for_a_bomb(tmp_path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.arange(1000.0)}, path)
    assert torch.equal(load_state_dict_file(path)["w"], torch.arange(1000.0))


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_a_truncated_last_pt_is_named_truncated_and_the_previous_one_offered(tmp_path, keep) -> None:
    last, prev = tmp_path / "last.pt", tmp_path / "last.prev.pt"
    torch.save({"version": 1, "w": torch.randn(20_000)}, last)
    torch.save({"version": 1, "w": torch.randn(20_000)}, prev)
    data = last.read_bytes()
    last.write_bytes(data[: int(len(data) * keep)])  # a kill or a full disk mid-copy
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(last)
    assert str(exc.value) == (f"checkpoint {last} is truncated (the file ends before the zip's directory); the "
                              f"previous checkpoint {prev} is intact if it loads: resume from it with --resume {prev}")
    prev.unlink()
    with pytest.raises(CheckpointError, match="is truncated .*; restore it from a backup or start a fresh run"):
        load_checkpoint(last)
