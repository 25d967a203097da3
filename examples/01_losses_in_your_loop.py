"""The UIT modules in a hand-written training loop (no Trainer, no UITModel).

Shows how to combine the building blocks yourself:

* ``CLIPDualEncoder`` (the tiny ``uit-tiny`` architecture, random init) for pooled and token features;
* your own ``nn.Linear`` identity classifier;
* the pure losses of ``uit_reid.losses``: SDM, ID, CMT and (optionally) ITC;
* text-guided image restoration from its pieces: ``to_grayscale`` -> ``encode_masked_image`` ->
  ``TIRHead`` -> ``patchify`` + ``tir_loss``;
* data from ``make_synthetic`` + ``load_dataset`` + ``build_train_loader``.

Run: ``python examples/01_losses_in_your_loop.py --out runs/examples/01_losses``. Writes
``losses.jsonl`` (one line per step) under ``--out``. ``UIT_EXAMPLES_SMALL=1`` makes it a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

import uit_reid as ur
from uit_reid.data import build_train_loader, load_dataset, make_synthetic
from uit_reid.images import CLIP_MEAN, CLIP_STD
from uit_reid.losses import cmt_loss, id_loss, itc_loss, sdm_loss
from uit_reid.tir import patchify, tir_loss, to_grayscale

SMALL = os.environ.get("UIT_EXAMPLES_SMALL") == "1"
IMAGE_SIZE = (96, 32)  # (height, width) of uit-tiny; ViT-B-16 uses (384, 128)
WEIGHTS = {"sdm": 1.0, "id": 1.0, "cmt": 10.0, "tir": 10.0}  # UIT's loss weights


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/examples/01_losses"))
    parser.add_argument("--steps", type=int, default=4 if SMALL else 60)
    parser.add_argument("--batch-size", type=int, default=8 if SMALL else 32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--itc-weight", type=float, default=0.0, help="add CLIP's InfoNCE with this weight")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    # Data: a small synthetic dataset on disk, read back like any benchmark.
    data_root = args.out / "data"
    if not (data_root / "annotations.jsonl").is_file():
        make_synthetic(data_root, num_ids=16 if SMALL else 120, images_per_id=2, seed=args.seed,
                       num_val_ids=0, num_test_ids=4 if SMALL else 20, progress=False)
    dataset = load_dataset(data_root, progress=False)

    # --8<-- [start:pieces]
    # Model pieces: encoder, TIR decoder and an identity classifier of your own.
    encoder = ur.CLIPDualEncoder.from_open_clip("uit-tiny", pretrained=None, image_size=IMAGE_SIZE)
    tir_head = ur.TIRHead(encoder.embed_dim, encoder.grid_size, encoder.patch_size, width=64, depth=1, heads=4)
    classifier = nn.Linear(encoder.embed_dim, dataset.num_classes)
    nn.init.normal_(classifier.weight, std=0.001)
    nn.init.zeros_(classifier.bias)
    modules = nn.ModuleList([encoder, tir_head, classifier]).train()
    optimizer = torch.optim.Adam([p for p in modules.parameters() if p.requires_grad], lr=args.lr)
    # --8<-- [end:pieces]

    loader = build_train_loader(
        dataset.train, encoder.tokenize, IMAGE_SIZE, args.batch_size,
        sampler="identity", num_instances=2, num_workers=0, text_augment_p=0.2, seed=args.seed,
    )

    log_path = args.out / "losses.jsonl"
    log_path.unlink(missing_ok=True)
    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.steps:
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            # --8<-- [start:step]
            images, ids, pids = batch["images"], batch["text_ids"], batch["pids"]

            # Global features for the batch-level losses, caption tokens for TIR.
            v = encoder.encode_image(images)
            t, t_tokens = encoder.encode_text(ids, return_tokens=True)
            losses = {
                "sdm": sdm_loss(v, t, pids, logit_scale=50.0),
                "id": id_loss(classifier(v), classifier(t), pids),
                "cmt": cmt_loss(v, t, pids, margin=0.05),
                "itc": itc_loss(v, t, logit_scale=50.0),
            }

            # TIR: restore the RGB pixels of 70% dropped patches of the grayscale image from the caption.
            gray = to_grayscale(images, CLIP_MEAN, CLIP_STD)
            masked = encoder.encode_masked_image(gray, mask_ratio=0.7)
            pred = tir_head(masked.tokens, masked.ids_restore, t_tokens, encoder.text_padding_mask(ids))
            losses["tir"] = tir_loss(pred, patchify(images, encoder.patch_size), masked.mask)

            total = sum(WEIGHTS[k] * losses[k] for k in WEIGHTS) + args.itc_weight * losses["itc"]
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            # --8<-- [end:step]

            step += 1
            record = {"step": step, "loss": float(total.detach()), **{k: float(val.detach()) for k, val in losses.items()}}
            with log_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            print(" ".join(f"{k}={val:.4f}" if isinstance(val, float) else f"{k}={val}" for k, val in record.items()))
            if step >= args.steps:
                break
        epoch += 1
    print(f"{step} steps in {time.perf_counter() - start:.1f} s; per-step losses in {log_path}")


if __name__ == "__main__":
    main()
