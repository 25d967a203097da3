"""Pre-train the TIR decoder shipped beside `uit-tiny` (pretrained="synthetic") and export it.

    python benchmarks/pretrain_tir_decoder.py --out runs/pretrain_tir            # train, measure, keep in --out
    python benchmarks/pretrain_tir_decoder.py --out runs/pretrain_tir --export   # and write the shipped file
    python benchmarks/pretrain_tir_decoder.py --out runs/ptd_bag --pretrained synthetic-bag --steps 300
                                              # a decoder for the bag start's encoders (the ablation's)

The decoder has the demo's architecture (bundled config `demo_uit`, `[model]`: 128 wide, 1 layer, 4 heads,
the authors' layout). It is trained alone (`uit_reid.train.tir_warmup.warm_up_decoder`) on the frozen
shipped encoders, on the same pre-training world the encoders saw (`pretrain_tiny`'s "web" world: 7,900
identities, short captions naming one garment's colour), with clean captions and constant learning rate.
Every ``--eval-every`` steps it measures the decoder's text use (`uit_reid.evaluation.evaluate_text_use`)
on the demo's test split, which it never trains on. Writes ``uit-tiny-synthetic-tir.safetensors`` (into
``uit_reid/pretrained/`` with ``--export``), its SHA-256 for `uit_reid.pretrained.SHIPPED_TIR_HEADS`, and
``summary.json`` (the curve, timings, machine load).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from uit_reid.data import load_dataset, make_synthetic  # noqa: E402
from uit_reid.evaluation import evaluate_text_use  # noqa: E402
from uit_reid.factory import save_tir_head  # noqa: E402
from uit_reid.io import atomic_write_text, file_sha256  # noqa: E402
from uit_reid.pretrained import SHIPPED_DIR  # noqa: E402
from uit_reid.train import Trainer, load_config  # noqa: E402
from uit_reid.train.tir_warmup import warm_up_decoder  # noqa: E402

logger = logging.getLogger("pretrain_tir_decoder")
FILE_NAME = "uit-tiny-{pretrained}-tir.safetensors"


def _web_world(root: Path) -> Path:
    """The encoders' pre-training world (`pretrain_tiny`'s synthetic section), generated if missing."""
    syn = load_config("pretrain_tiny").synthetic
    if not (root / "annotations.jsonl").is_file():
        make_synthetic(root, num_ids=syn.num_ids, images_per_id=syn.images_per_id, seed=syn.seed,
                       num_val_ids=syn.num_val_ids, num_test_ids=syn.num_test_ids, workers=syn.workers, world=syn.world)
    return root


def _demo_test(root: Path):
    """The demo's test split (same identities, images and captions as `make demo`'s)."""
    demo = load_config("demo_uit").synthetic
    if not (root / "annotations.jsonl").is_file():
        make_synthetic(root, num_ids=demo.num_test_ids, images_per_id=demo.images_per_id, seed=demo.seed,
                       num_val_ids=0, num_test_ids=demo.num_test_ids, workers=demo.workers, progress=False)
    return load_dataset(root).test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--data", default=None, help="the web world (default: <out>/data, generated)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2.5e-3)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--layout", default=None, help="decoder layout (default: the demo config's)")
    parser.add_argument("--export", action="store_true", help="write the shipped file into uit_reid/pretrained/")
    parser.add_argument("--pretrained", default="synthetic",
                        help="the frozen encoders' weights (model.pretrained; default: %(default)s, the demo's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    start = time.perf_counter()
    data = _web_world(Path(args.data) if args.data else out / "data")
    test = _demo_test(out / "demo_test")
    data_s = time.perf_counter() - start
    config = load_config("demo_uit").override([
        f"data.root={json.dumps(str(data))}", f"train.output_dir={json.dumps(str(out / 'run'))}",
        "synthetic.generate=false", f"data.batch_size={args.batch}", 'data.sampler="random"',
        "data.text_augment_p=0.0", "data.token_corruption=false", "model.tir_pretrained=\"none\"",
        f"model.pretrained={json.dumps(args.pretrained)}",
        *([f"model.tir_layout={json.dumps(args.layout)}"] if args.layout else []),
    ])
    trainer = Trainer(config, overwrite=True)
    model = trainer.model
    curve: list[dict] = []
    train_start = time.perf_counter()

    def measure(step: int, loss: float) -> None:
        if step % args.eval_every == 0 or step == args.steps:
            m = evaluate_text_use(model, test)  # its own mask generator: the training streams are untouched
            curve.append({"step": step, "loss": loss, "seconds": round(time.perf_counter() - train_start, 1),
                          "load_average": os.getloadavg()[0], **m})
            model.train()
            logger.info("step %d: loss %.4f, text use %.2f (vs empty %.2f, other %.2f)", step, loss,
                        m["text_use"], m["text_use_empty"], m["text_use_other"])

    with trainer.rng.active():
        trainer.loader.batch_sampler.set_epoch(0)
        warm_up_decoder(model, trainer.loader, args.steps, args.lr, trainer.device, callback=measure)
    train_s = time.perf_counter() - train_start
    path = (SHIPPED_DIR if args.export else out) / FILE_NAME.format(pretrained=args.pretrained)
    save_tir_head(model.tir_head, path)
    digest = file_sha256(path)
    logger.info("wrote %s (sha256 %s), %d bytes", path, digest, path.stat().st_size)
    summary = {"data_seconds": round(data_s, 1), "train_seconds": round(train_s, 1), "steps": args.steps,
               "batch": args.batch, "lr": args.lr, "pretrained": args.pretrained, "sha256": digest, "head": model.tir_head.config(),
               "torch_threads": torch.get_num_threads(), "curve": curve}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
