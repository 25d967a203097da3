"""Synthetic ablation: what each UIT component does for the tiny model on the built-in dataset.

Two tables, each row the mean ± std over seeds of test R1 / R5 / mAP (text-to-image, percent):

1. From random init with the demo's recipe as the base (symmetric InfoNCE, since SDM alone does
   not leave chance level from random init): base, + CMT, + TIR, + text augmentation, all.
2. Fine-tuning, the setting UIT was designed for: the tiny model is pre-trained contrastively once
   (on a disjoint synthetic dataset, so no test identity is seen), saved to a file, then fine-tuned
   from it with the paper's own losses and the authors' caption corruption: SDM + ID, + CMT, + TIR
   (all four, weights 1/1/10/10) with the authors' decoder or the residual variant, and UIT without
   the caption corruption.

Every run in a table has the same step budget. Usage:

    python benchmarks/ablation.py                       # the recorded tables (about 40 min on 2 cores)
    python benchmarks/ablation.py --quick               # a smoke run
    python benchmarks/ablation.py --seeds 3 --steps 300 --finetune-steps 200
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from uit_reid.data import load_dataset, make_synthetic  # noqa: E402
from uit_reid.train import TrainConfig, Trainer, load_config  # noqa: E402

# A decoder sized for the tiny encoder (UIT's 512-wide, 4-layer one is for ViT-B/16).
TINY_TIR = ["model.tir_width=64", "model.tir_depth=1", "model.tir_heads=4"]

SCRATCH_VARIANTS: dict[str, list[str]] = {
    "base (ITC)": [],
    "+ CMT": ["loss.cmt=10.0"],
    "+ TIR": ["model.tir=true", "loss.tir=10.0", *TINY_TIR],
    "+ text aug": ["data.text_aug_p=0.2"],
    "all (ITC + CMT + TIR + text aug)": ["loss.cmt=10.0", "model.tir=true", "loss.tir=10.0", *TINY_TIR,
                                         "data.text_aug_p=0.2"],
}

UIT_FINETUNE = ["loss.cmt=10.0", "model.tir=true", "loss.tir=10.0", *TINY_TIR]

FINETUNE_VARIANTS: dict[str, list[str]] = {
    "SDM + ID": [],
    "+ CMT": ["loss.cmt=10.0"],
    "+ TIR, authors' decoder (UIT as released)": [*UIT_FINETUNE, 'model.tir_layout="sen"'],
    "+ TIR, residual decoder": [*UIT_FINETUNE, 'model.tir_layout="residual"'],
    "UIT as released, without token corruption": [*UIT_FINETUNE, 'model.tir_layout="sen"',
                                                  "data.token_corruption=false"],
}

FINETUNE_BASE = [
    "loss.itc=0.0",
    "loss.sdm=1.0",
    "loss.id=1.0",
    "loss.logit_scale=50.0",
    "data.text_aug_p=0.2",
    "data.token_corruption=true",  # the authors' caption corruption (off in the demo's recipe)
]


def _run(config: TrainConfig, dataset, out: Path) -> dict[str, float]:
    config = config.override([f"train.output_dir={json.dumps(str(out))}", "train.eval_every=1000000"])
    result = Trainer(config, dataset=dataset).fit()
    return result["test"]


def _summary(runs: list[dict[str, float]]) -> str:
    cells = []
    for key in ("R1", "R5", "mAP"):
        values = [r[key] for r in runs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        cells.append(f"{statistics.mean(values):.1f} ± {std:.1f}")
    return " | ".join(cells)


def _table(title: str, rows: dict[str, list[dict[str, float]]]) -> str:
    lines = [f"### {title}", "", "| variant | R1 | R5 | mAP |", "|---|---|---|---|"]
    lines += [f"| {name} | {_summary(runs)} |" for name, runs in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="step budget per scratch run (default: the demo's)")
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-scratch", action="store_true")
    parser.add_argument("--skip-finetune", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    base = load_config("demo")
    syn = base.synthetic
    if args.quick:
        syn.num_ids, syn.images_per_id, syn.num_val_ids, syn.num_test_ids = 64, 2, 8, 16
        args.seeds = min(args.seeds, 2)
    demo_steps = base.train.max_steps or 10**9
    steps = args.steps or (6 if args.quick else demo_steps)
    pretrain_steps = args.pretrain_steps or (6 if args.quick else steps)
    finetune_steps = args.finetune_steps or (6 if args.quick else max(1, steps // 2))
    common = [f"train.max_steps={steps}", "train.epochs=1000", "train.log_every=1000000"]

    data_root = out / "data"
    if not (data_root / "annotations.jsonl").is_file():
        make_synthetic(data_root, num_ids=syn.num_ids, images_per_id=syn.images_per_id, seed=syn.seed,
                       num_val_ids=syn.num_val_ids, num_test_ids=syn.num_test_ids)
    dataset = load_dataset(data_root, progress=False)
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; test split: {dataset.test.num_ids} ids, "
          f"{dataset.test.num_images} images, {dataset.test.num_captions} captions")

    report: dict[str, dict[str, list[dict[str, float]]]] = {}
    if not args.skip_scratch:
        rows: dict[str, list[dict[str, float]]] = {}
        for name, extra in SCRATCH_VARIANTS.items():
            rows[name] = []
            for seed in range(args.seeds):
                cfg = base.override([*common, *extra, f"train.seed={seed}"])
                rows[name].append(_run(cfg, dataset, out / "scratch" / f"{len(rows)}_{seed}"))
            print(f"  {name}: {_summary(rows[name])}", flush=True)
        report["scratch"] = rows
        print(_table(f"From random init, {steps} steps of batch {base.data.batch_size}", rows), flush=True)

    if not args.skip_finetune:
        # Pre-train on a disjoint synthetic set (other seed, other identities) with the demo recipe.
        pre_root = out / "pretrain_data"
        if not (pre_root / "annotations.jsonl").is_file():
            make_synthetic(pre_root, num_ids=syn.num_ids, images_per_id=syn.images_per_id, seed=syn.seed + 1000,
                           num_val_ids=syn.num_val_ids, num_test_ids=syn.num_test_ids)
        pre_cfg = base.override([f"train.max_steps={pretrain_steps}", "train.epochs=1000", "train.log_every=1000000"])
        pre_dir = out / "pretrain"
        pre_dataset = load_dataset(pre_root, progress=False)
        pre_trainer = Trainer(pre_cfg.override([f"train.output_dir={json.dumps(str(pre_dir))}"]), dataset=pre_dataset)
        pre_trainer.fit()
        checkpoint = pre_dir / "clip_pretrained.pt"
        torch.save(pre_trainer.model.encoder.clip.state_dict(), checkpoint)
        ft_common = [
            *FINETUNE_BASE,
            f"model.pretrained={json.dumps(str(checkpoint))}",
            f"train.max_steps={finetune_steps}",
            "train.epochs=1000",
            "train.log_every=1000000",
            "optim.lr=1e-4",
            "optim.warmup_epochs=0.1",
        ]
        rows = {"pre-trained, no fine-tuning": []}
        zero_cfg = base.override([f"model.pretrained={json.dumps(str(checkpoint))}", "train.max_steps=1", "optim.lr=0.0"])
        rows["pre-trained, no fine-tuning"].append(_run(zero_cfg, dataset, out / "finetune" / "zero"))
        for name, extra in FINETUNE_VARIANTS.items():
            rows[name] = []
            for seed in range(args.seeds):
                cfg = base.override([*ft_common, *extra, f"train.seed={seed}"])
                rows[name].append(_run(cfg, dataset, out / "finetune" / f"{len(rows)}_{seed}"))
            print(f"  {name}: {_summary(rows[name])}", flush=True)
        report["finetune"] = rows
        print(_table(f"Fine-tuning a contrastively pre-trained tiny model, {finetune_steps} steps", rows), flush=True)

    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
