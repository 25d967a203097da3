"""Evaluate a checkpoint on a dataset split: text-to-image and image-to-text R@1/5/10, mAP, mINP.

Uses the three public pieces the ``uit-reid evaluate`` command is made of: ``load_model`` (a
``save_pretrained`` directory or a trainer's ``last.pt``), ``encode_split`` (normalised caption and
image features with their pids) and ``uit_reid.retrieval.evaluate`` (metrics from a similarity
matrix whose rows are queries).

Without ``--model`` it first trains the tiny model for a few steps on synthetic pedestrians and
evaluates the resulting ``last.pt`` (so the numbers are those of a barely trained model).
With ``UIT_EXAMPLES_SMALL=1`` that training (``examples/_quick_train.py``) uses tiny sizes.

Run: ``python examples/04_evaluate_checkpoint.py --model runs/cuhk_pedes/best --dataset
/path/to/CUHK-PEDES --out runs/examples/04_eval``. Writes ``metrics.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from _quick_train import quick_train  # examples/_quick_train.py, beside this script

from uit_reid.data import load_dataset
from uit_reid.evaluation import encode_split
from uit_reid.factory import load_model
from uit_reid.retrieval import evaluate, metrics_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/examples/04_eval"))
    parser.add_argument("--model", type=Path, help="model directory or last.pt (default: train briefly)")
    parser.add_argument("--dataset", type=Path, help="dataset root or annotation file")
    parser.add_argument("--format", default="auto", help="auto, cuhk-pedes, icfg-pedes, rstpreid or jsonl")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    logging.getLogger("uit_reid").setLevel(logging.INFO)  # the trainer reports through logging
    args.out.mkdir(parents=True, exist_ok=True)

    checkpoint, dataset_root = args.model, args.dataset
    if checkpoint is None:
        print("no --model: training the tiny model for a few steps on synthetic pedestrians first")
        checkpoint = quick_train(args.out) / "last.pt"
        dataset_root = dataset_root or args.out / "data"
    if dataset_root is None:
        parser.error("--dataset is required with --model")

    model = load_model(checkpoint, device=args.device)
    split = getattr(load_dataset(dataset_root, format=args.format, progress=False), args.split)
    if split is None:
        parser.error(f"{dataset_root} has no {args.split} split (ICFG-PEDES has no val)")
    q, q_pids, g, g_pids = encode_split(model, split, args.batch_size, args.device)
    similarity = q @ g.t()  # rows: captions (queries), columns: images (gallery); features are normalised
    rows = {
        "text-to-image": evaluate(similarity, q_pids, g_pids),
        "image-to-text": evaluate(similarity.t(), g_pids, q_pids),
    }
    print(f"{checkpoint} on {dataset_root} [{args.split}]: {len(q)} captions, {len(g)} images")
    print(metrics_table(rows, label="direction"))
    (args.out / "metrics.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(f"metrics -> {args.out / 'metrics.json'}")


if __name__ == "__main__":
    main()
