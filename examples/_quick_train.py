"""Shared by examples 03 and 04: a briefly trained tiny model when the user gives no checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from uit_reid.train import TrainConfig, Trainer

SMALL = os.environ.get("UIT_EXAMPLES_SMALL") == "1"


def quick_train(out: Path) -> Path:
    """Train the tiny model briefly on synthetic pedestrians in ``out`` (data in ``out/data``, run in
    ``out/run``); return the run directory, which holds ``last.pt`` and the chosen model."""
    config = TrainConfig.from_dict({
        "model": {"tower": "uit-tiny", "pretrained": "none", "image_size": [96, 32], "tir_head": False},
        "loss": {"sdm": 0.0, "id": 0.0, "tir": 0.0, "cmt": 0.0, "itc": 1.0, "logit_scale": 20.0},
        "data": {"root": str(out / "data"), "format": "jsonl", "batch_size": 8 if SMALL else 64,
                 "num_workers": 0, "padding": 4, "erasing_p": 0.0, "text_augment_p": 0.0},
        "optim": {"lr": 5e-4, "weight_decay": 0.0, "eps": 1e-8, "warmup_epochs": 0.5},
        "train": {"epochs": 1 if SMALL else 3, "max_steps": 3 if SMALL else 0, "device": "cpu",
                  "precision": "fp32", "log_every": 10, "output_dir": str(out / "run")},
        "synthetic": {"generate": True, "num_ids": 24 if SMALL else 600, "images_per_id": 2,
                      "num_val_ids": 4 if SMALL else 40, "num_test_ids": 4 if SMALL else 60},
    })
    Trainer(config).fit()
    return out / "run"
