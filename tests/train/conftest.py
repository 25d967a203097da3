"""A tiny synthetic dataset and a tiny training config shared by the trainer and CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from uit_reid.data import make_synthetic
from uit_reid.train import TrainConfig


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, num_ids=24, images_per_id=2, seed=0, num_val_ids=4, num_test_ids=4, progress=False)
    return root


def tiny_config_dict(root: Path, out: Path, **train: object) -> dict:
    """All four UIT losses (plus ITC) on the tiny model, small enough for a few seconds per run."""
    return {
        "model": {"tower": "uit-tiny", "pretrained": "none", "image_size": [96, 32], "tir_head": True,
                  "tir_width": 32, "tir_depth": 1, "tir_heads": 4},
        "loss": {"sdm": 1.0, "id": 1.0, "tir": 1.0, "cmt": 1.0, "itc": 1.0, "logit_scale": 20.0},
        "data": {"root": str(root), "batch_size": 8, "num_workers": 0, "padding": 2, "text_augment_p": 0.5,
                 "eval_batch_size": 64},
        "optim": {"lr": 3e-4, "warmup_epochs": 0.5},
        "train": {"epochs": 2, "device": "cpu", "output_dir": str(out), "log_every": 1, "eval_every": 1,
                  **train},
    }


@pytest.fixture(scope="session")
def config_dict():
    """The :func:`tiny_config_dict` builder, as a fixture."""
    return tiny_config_dict


@pytest.fixture
def tiny_config(tiny_dataset, tmp_path) -> TrainConfig:
    return TrainConfig.from_dict(tiny_config_dict(tiny_dataset, tmp_path / "run"))
