"""One tiny end-to-end run through the CLI, shared by the CLI and service tests."""

from __future__ import annotations

from pathlib import Path

from uit_reid.cli import main
from uit_reid.train import TrainConfig


def train_tiny_run(base: Path, num_ids: int) -> dict[str, Path]:
    """`uit-reid synth` (``num_ids`` identities, 2 images each) and `uit-reid train` (2 steps) under ``base``."""
    data = base / "data"
    assert main(["synth", "--out", str(data), "--num-ids", str(num_ids), "--images-per-id", "2",
                 "--num-val-ids", "4", "--num-test-ids", "4"]) == 0
    config = TrainConfig.from_dict({
        "model": {"tower": "uit-tiny", "pretrained": "none", "image_size": [96, 32], "tir_head": False},
        "loss": {"tir": 0.0, "itc": 1.0, "logit_scale": 20.0},
        "data": {"root": str(data), "batch_size": 8, "num_workers": 0},
        "train": {"epochs": 1, "max_steps": 2, "device": "cpu", "output_dir": str(base / "run")},
    })
    config_path = base / "tiny.toml"
    config_path.write_text(config.to_toml())
    assert main(["train", "--config", str(config_path)]) == 0
    return {"data": data, "run": base / "run", "config": config_path, "base": base}
