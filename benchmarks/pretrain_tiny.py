"""Pre-train the shipped `uit-tiny` checkpoint on the "web" synthetic world and export it.

    python benchmarks/pretrain_tiny.py                  # the shipped run (bundled config pretrain_tiny)
    python benchmarks/pretrain_tiny.py --tag synthetic-bag   # the second one (config pretrain_tiny_bag)
    python benchmarks/pretrain_tiny.py --quick          # a smoke run into runs/pretrain_tiny_quick

Trains contrastively (symmetric InfoNCE) from random init with the bundled `pretrain_tiny` config,
which generates the pre-training world (`uit_reid.data.web_world`) first. Then it stores the CLIP
weights in fp16 as ``uit_reid/pretrained/uit-tiny-<tag>.safetensors`` (``--export``, default
on for the full run), prints the file's SHA-256 for `uit_reid.pretrained.SHIPPED`, and measures the
zero-shot figures the model card records: on the demo's test split (250 identities) and on the small
fixed split `tests/test_pretrained.py` checks. Wall times go to the log and ``pretrain_summary.json``.
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
from safetensors.torch import save  # noqa: E402

from uit_reid.data import load_dataset, make_synthetic  # noqa: E402
from uit_reid.encoders import CLIPDualEncoder  # noqa: E402
from uit_reid.evaluation import evaluate_model  # noqa: E402
from uit_reid.factory import build_model, load_model  # noqa: E402
from uit_reid.io import atomic_write_bytes, atomic_write_text, file_sha256  # noqa: E402
from uit_reid.pretrained import CHECK_SPLIT, SHIPPED_DIR  # noqa: E402
from uit_reid.train import Trainer, load_config  # noqa: E402

logger = logging.getLogger("pretrain_tiny")

PRETRAIN_CONFIGS = {"synthetic": "pretrain_tiny", "synthetic-bag": "pretrain_tiny_bag"}
"""Shipped tag -> the bundled config that pre-trains it."""



def export_weights(model_dir: Path, out: Path) -> str:
    """Write the CLIP weights of a trained model as fp16 safetensors at ``out``; return the SHA-256.

    Pre-training runs at a short context (its captions are short); the file gets the architecture's
    full 77 text positions so any context length loads. Rows past the training context keep
    open_clip's initial values: with the causal mask and EOT pooling they would get no gradient from
    these captions at any context length, so this equals training at 77, minus the wasted compute.
    """
    model = load_model(model_dir)
    state = {k: v.detach().contiguous() for k, v in model.encoder.clip.state_dict().items() if k != "attn_mask"}
    torch.manual_seed(0)
    full = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=model.encoder.image_size).clip.state_dict()
    trained = state["positional_embedding"]
    state["positional_embedding"] = torch.cat([trained, full["positional_embedding"][trained.shape[0]:]])
    state = {k: v.to(torch.float16) for k, v in state.items()}
    atomic_write_bytes(out, save(state, metadata={"architecture": "uit-tiny", "tag": "synthetic"}))
    return file_sha256(out)


def zero_shot(weights: str, root: Path, synth: dict[str, int]) -> dict[str, float]:
    """Test metrics of the encoder built from ``weights`` (a tag or file) at the demo's input size."""
    demo = load_config("demo_uit")
    make_synthetic(root, **synth, progress=False)
    split = load_dataset(root).test
    model = build_model(demo.model, demo.loss, num_classes=1, pretrained=weights,
                        interpolation=demo.data.interpolation).eval()
    return evaluate_model(model, split, interpolation=demo.data.interpolation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="run folder (default: the config's output_dir)")
    parser.add_argument("--quick", action="store_true", help="a few steps on a small world, no export")
    parser.add_argument("--export", action=argparse.BooleanOptionalAction, default=None,
                        help="write the shipped file (default: on for the full run, off for --quick)")
    parser.add_argument("--tag", choices=sorted(PRETRAIN_CONFIGS), default="synthetic",
                        help="which shipped checkpoint to pre-train (its bundled config: %(default)s -> pretrain_tiny)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    export = (not args.quick) if args.export is None else args.export

    config = load_config(PRETRAIN_CONFIGS[args.tag])
    out = Path(args.out or (config.train.output_dir + ("_quick" if args.quick else "")))
    overrides = [f"train.output_dir={json.dumps(str(out))}", f"data.root={json.dumps(str(out / 'data'))}"]
    if args.quick:
        overrides += ["synthetic.num_ids=64", "synthetic.num_val_ids=8", "train.max_steps=4", "train.epochs=1",
                      "data.batch_size=32", "train.log_every=1", "train.eval_every=1"]
    config = config.override(overrides)

    start = time.perf_counter()
    trainer = Trainer(config, overwrite=True)
    data_s = time.perf_counter() - start
    result = trainer.fit()
    train_s = time.perf_counter() - start - data_s
    logger.info("data %.0f s, training %.0f s", data_s, train_s)

    name = f"uit-tiny-{args.tag}.safetensors"
    weights = str((SHIPPED_DIR if export else out) / name)
    digest = export_weights(Path(result["model_dir"]), Path(weights))
    logger.info("wrote %s (sha256 %s)", weights, digest)

    demo = load_config("demo_uit").synthetic
    demo_split = {"num_ids": demo.num_test_ids, "images_per_id": demo.images_per_id, "seed": demo.seed,
                  "num_val_ids": 0, "num_test_ids": demo.num_test_ids}
    # make_synthetic draws identities in order and puts the first num_test_ids in test, so this
    # split is exactly the demo's test split (same identities, images and captions).
    summary = {
        "data_seconds": round(data_s, 1),
        "train_seconds": round(train_s, 1),
        "val": result.get("val"),
        "sha256": digest,
        "zero_shot_demo_test": zero_shot(weights, out / "demo_test", demo_split),
        "zero_shot_check_split": zero_shot(weights, out / "check_split", CHECK_SPLIT),
    }
    atomic_write_text(out / "pretrain_summary.json", json.dumps(summary, indent=2) + "\n")
    logger.info("summary: %s", json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
