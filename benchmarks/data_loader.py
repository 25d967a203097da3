"""Train-loader throughput (images/s) with 0 and 2 workers, at 384x128 and at the tiny demo size.

Writes a small synthetic dataset to a temporary folder (PNG at 192x64 as generated, plus a JPEG copy at
384x128 that mimics the benchmarks' JPEG files), then times ``build_train_loader`` end to end: decode,
train transforms, TextAugment, tokenisation in the collate, identity sampler. Prints a Markdown table.

    HF_HUB_OFFLINE=1 python benchmarks/data_loader.py [--batches 20] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from PIL import Image

from uit_reid.data import build_train_loader, load_dataset, make_synthetic


def _jpeg_copy(src: Path, dst: Path, size: tuple[int, int]) -> Path:
    """Re-encode the synthetic images as JPEG at ``size`` (h, w), with annotations pointing at them."""
    dst.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in (src / "annotations.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out = Path(rec["image"]).with_suffix(".jpg")
        (dst / out).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src / rec["image"]) as im:
            im.resize((size[1], size[0]), Image.BICUBIC).save(dst / out, quality=95)
        rec["image"] = str(out)
        lines.append(json.dumps(rec))
    (dst / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    return dst


def write_jpeg_dataset(root: Path, num_ids: int, size: tuple[int, int] = (384, 128)) -> Path:
    """A synthetic dataset of ``num_ids`` x 4 JPEG files (quality 95) at ``size`` (h, w), all in train."""
    png = root / "png"
    make_synthetic(png, num_ids=num_ids, images_per_id=4, seed=0, num_val_ids=0, num_test_ids=0, progress=False)
    return _jpeg_copy(png, root / "jpg", size)


def _time(split, tokenizer, size, workers: int, batch_size: int, batches: int) -> float:
    loader = build_train_loader(split, tokenizer, size, batch_size=batch_size, num_instances=4,
                                num_workers=workers, pin_memory=False)
    it = iter(loader)
    for _ in range(2):  # warm-up: worker start-up, first decode
        next(it)
    n = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        n += next(it)["images"].shape[0]
    dt = time.perf_counter() - t0
    del it, loader
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-ids", type=int, default=400)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    with tempfile.TemporaryDirectory() as d:
        png = Path(d) / "png"
        t0 = time.perf_counter()
        make_synthetic(png, num_ids=args.num_ids, images_per_id=4, seed=0, progress=False)
        gen = time.perf_counter() - t0
        jpg = _jpeg_copy(png, Path(d) / "jpg", (384, 128))
        sources = {"PNG 192x64 (synthetic)": load_dataset(png).train, "JPEG 384x128": load_dataset(jpg).train}
        print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}; "
              f"batch {args.batch_size}, {args.batches} timed batches; "
              f"synthetic {args.num_ids} ids x 4 images generated in {gen:.1f} s")
        print()
        print("| source images | loader size (h x w) | workers | images/s |")
        print("|---|---|---|---|")
        for name, split in sources.items():
            for size in ((384, 128), (96, 32)):
                for w in args.workers:
                    ips = _time(split, tokenizer, size, w, args.batch_size, args.batches)
                    print(f"| {name} | {size[0]}x{size[1]} | {w} | {ips:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
