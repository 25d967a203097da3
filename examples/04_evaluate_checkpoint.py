"""Evaluate a checkpoint on a dataset split: text-to-image and image-to-text R@1/5/10, mAP, mINP.

Uses the three public pieces the ``uit-reid evaluate`` command is made of: ``load_model`` (a
``save_pretrained`` directory or a trainer's ``last.pt``), ``encode_split`` (normalised caption and
image features with their pids) and ``uit_reid.retrieval.evaluate`` (metrics from a similarity
matrix whose rows are queries).

Without ``--checkpoint`` it first trains the tiny model for a few steps on synthetic pedestrians and
evaluates the resulting ``last.pt`` (so the numbers are those of a barely trained model).

Run: ``python examples/04_evaluate_checkpoint.py --checkpoint runs/cuhk_pedes/best --dataset
/path/to/CUHK-PEDES --out runs/examples/04_eval``. Writes ``metrics.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch

from uit_reid.data import load_dataset
from uit_reid.retrieval import evaluate
from uit_reid.train import TrainConfig, Trainer, encode_split, load_model

SMALL = os.environ.get("UIT_EXAMPLES_SMALL") == "1"
METRIC_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def quick_checkpoint(out: Path) -> tuple[Path, Path]:
    """Train the tiny model a few steps on synthetic data; return (last.pt, dataset root)."""
    config = TrainConfig.from_dict({
        "model": {"name": "uit-tiny", "pretrained": "none", "image_size": [96, 32], "tir": False},
        "loss": {"sdm": 0.0, "id": 0.0, "tir": 0.0, "cmt": 0.0, "itc": 1.0, "logit_scale": 20.0},
        "data": {"root": str(out / "data"), "format": "jsonl", "batch_size": 8 if SMALL else 64,
                 "num_workers": 0, "padding": 4, "erasing_p": 0.0, "text_aug_p": 0.0},
        "optim": {"lr": 5e-4, "weight_decay": 0.0, "eps": 1e-8, "warmup_epochs": 0.5},
        "train": {"epochs": 1 if SMALL else 3, "max_steps": 3 if SMALL else 0, "device": "cpu",
                  "precision": "fp32", "log_every": 10, "output_dir": str(out / "run")},
        "synthetic": {"generate": True, "num_ids": 24 if SMALL else 600, "images_per_id": 2,
                      "num_val_ids": 4 if SMALL else 40, "num_test_ids": 4 if SMALL else 60},
    })
    print("no --checkpoint: training the tiny model for a few steps on synthetic pedestrians first")
    Trainer(config).fit()
    return out / "run" / "last.pt", out / "data"


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| direction | " + " | ".join(METRIC_KEYS) + " |", "|---" * (len(METRIC_KEYS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{m[k]:.2f}" for k in METRIC_KEYS) + " |" for name, m in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/examples/04_eval"))
    parser.add_argument("--checkpoint", type=Path, help="model directory or last.pt (default: train briefly)")
    parser.add_argument("--dataset", type=Path, help="dataset root or annotation file")
    parser.add_argument("--format", default="auto", help="auto, cuhk-pedes, icfg-pedes, rstpreid or jsonl")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logging.getLogger("uit_reid").setLevel(logging.INFO)  # the trainer reports through logging
    args.out.mkdir(parents=True, exist_ok=True)

    checkpoint, dataset_root = args.checkpoint, args.dataset
    if checkpoint is None:
        checkpoint, default_root = quick_checkpoint(args.out)
        dataset_root = dataset_root or default_root
    if dataset_root is None:
        parser.error("--dataset is required with --checkpoint")

    model, image_size = load_model(checkpoint, device=args.device)
    split = getattr(load_dataset(dataset_root, format=args.format, progress=False), args.split)
    if split is None:
        parser.error(f"{dataset_root} has no {args.split} split (ICFG-PEDES has no val)")
    q, q_pids, g, g_pids = encode_split(model, split, image_size, args.batch_size, args.device)
    similarity = q @ g.t()  # rows: captions (queries), columns: images (gallery); features are normalised
    rows = {
        "text-to-image": evaluate(similarity, q_pids, g_pids),
        "image-to-text": evaluate(similarity.t(), g_pids, q_pids),
    }
    print(f"{checkpoint} on {dataset_root} [{args.split}]: {len(q)} captions, {len(g)} images")
    print(table(rows))
    (args.out / "metrics.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(f"metrics -> {args.out / 'metrics.json'}")


if __name__ == "__main__":
    main()
