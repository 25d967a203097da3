"""Image decoding throughput: per worker, the train loader end to end, and index build.

Writes synthetic pedestrians as JPEG files at 384x128 (quality 95) to a temporary folder, then prints
Markdown tables of:

1. images/s one loader worker delivers (decode + transforms, one core) for the train and the eval
   transforms, with the library's PIL loader and with ``torchvision.io.decode_jpeg`` + tensor
   transforms, and how many workers feed ``--goal`` images/s (2,000: a GPU's training step);
2. ``build_train_loader`` end to end (decode, transforms, TextAugment, tokenisation, sampler) with
   0, 1 and 2 workers;
3. ``build_index_from_folder`` with the tiny model: encode-only images/s against end to end.

    HF_HUB_OFFLINE=1 python benchmarks/data_loader.py [--num-ids 400] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import PIL
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
    make_synthetic(png, num_ids=num_ids, images_per_id=4, seed=0, num_val_ids=0, num_test_ids=0, progress=False,
                   workers=min(8, os.cpu_count() or 1))
    return _jpeg_copy(png, root / "jpg", size)


def _per_image_rate(files: list[Path], decode: Callable[[Path], Any], transform: Callable[[Any], Any]) -> float:
    """Images/s of decode + transform on one core (what one loader worker can deliver)."""
    for path in files[:16]:  # warm-up: page cache, lazy imports
        transform(decode(path))
    start = time.perf_counter()
    for path in files:
        transform(decode(path))
    return len(files) / (time.perf_counter() - start)


def _tensor_transforms(size: tuple[int, int], train: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same steps as `uit_reid.augment`'s transforms, on uint8 tensors (torchvision.transforms.v2)."""
    from torchvision.transforms import v2

    from uit_reid.images import CLIP_MEAN, CLIP_STD

    steps: list[Any] = [v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)]
    if train:
        steps += [v2.RandomHorizontalFlip(0.5), v2.Pad(10), v2.RandomCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)]
    if train:
        steps.append(v2.RandomErasing(p=0.5, scale=(0.02, 0.4), value=0))
    return v2.Compose(steps)


def per_worker_table(files: list[Path], size: tuple[int, int], goal: int) -> list[str]:
    """Per-worker images/s for train and eval transforms: PIL (the library's loader) vs decode_jpeg."""
    from torchvision.io import decode_jpeg, read_file

    from uit_reid import augment
    from uit_reid.images import load_image

    rows = [f"| decode | transforms | images/s per worker | workers for {goal:,} images/s |",
            "|---|---|---|---|"]
    decoders = {
        "PIL (`uit_reid.images.load_image`) | none (decode only)": lambda p: load_image(p, size),
        "`torchvision.io.decode_jpeg` | none (decode only)": lambda p: decode_jpeg(read_file(str(p))),
    }
    for label, decode in decoders.items():
        rate = _per_image_rate(files, decode, lambda image: image)
        rows.append(f"| {label} | {rate:,.0f} | {math.ceil(goal / rate)} |")
    for train in (True, False):
        name = "train" if train else "eval"
        pil = augment.build_train_transform(size) if train else augment.build_eval_transform(size)
        cases = {
            f"PIL (`uit_reid.images.load_image`) | {name} (PIL, `uit_reid.augment`)":
                (lambda p: load_image(p, size), pil),
            f"`torchvision.io.decode_jpeg` | {name} (tensor, `transforms.v2`)":
                (lambda p: decode_jpeg(read_file(str(p))), _tensor_transforms(size, train)),
        }
        for label, (decode, transform) in cases.items():
            rate = _per_image_rate(files, decode, transform)
            rows.append(f"| {label} | {rate:,.0f} | {math.ceil(goal / rate)} |")
    return rows


def _loader_rate(split, tokenizer, size, workers: int, batch_size: int, batches: int) -> float:
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


def index_build_table(folder: Path, workers: list[int]) -> list[str]:
    """Index build with the tiny model: encode-only images/s vs end to end (decode + encode)."""
    from uit_reid import CLIPDualEncoder, augment
    from uit_reid.retrieval import build_index_from_folder

    torch.manual_seed(0)
    encoder = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=(96, 32)).eval()
    size = encoder.image_size

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return encoder.encode_image(x)

    n_files = len(list(folder.rglob("*.jpg")))
    batch = torch.randn(64, 3, *size)
    encode(batch)
    start = time.perf_counter()
    for _ in range(10):
        encode(batch)
    encode_only = 640 / (time.perf_counter() - start)
    rows = ["| path | workers | images/s |", "|---|---|---|", f"| encode only (tensors in memory) | - | {encode_only:,.0f} |"]
    for w in workers:
        start = time.perf_counter()
        build_index_from_folder(folder, encode, augment.build_eval_transform(size), batch_size=64, progress=False,
                                image_size=size, num_workers=w)
        rows.append(f"| end to end (`build_index_from_folder`, JPEG 384x128 files) | {w} | "
                    f"{n_files / (time.perf_counter() - start):,.0f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-ids", type=int, default=400)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--goal", type=int, default=2000, help="images/s the loader must feed (a GPU's step rate)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    size = (384, 128)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        jpg = write_jpeg_dataset(Path(d), args.num_ids, size)
        gen = time.perf_counter() - t0
        files = sorted(jpg.rglob("*.jpg"))
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
              f"{load:.1f} at start; torch {torch.__version__}; {len(files)} JPEG files at {size[0]}x{size[1]} "
              f"(quality 95, written in {gen:.1f} s); 1 torch thread")
        from PIL import features

        print(f"Pillow {PIL.__version__}, libjpeg-turbo {features.version_feature('libjpeg_turbo')}")
        print("\nPer worker (one process, decode + transforms, images/s):\n")
        print("\n".join(per_worker_table(files, size, args.goal)), flush=True)
        split = load_dataset(jpg).train
        print(f"\nTrain loader end to end (batch {args.batch_size}, {args.batches} timed batches, tokenisation "
              "and identity sampler included):\n")
        print("| loader size (h x w) | workers | images/s |\n|---|---|---|")
        for loader_size in (size, (96, 32)):
            for w in args.workers:
                ips = _loader_rate(split, tokenizer, loader_size, w, args.batch_size, args.batches)
                print(f"| {loader_size[0]}x{loader_size[1]} | {w} | {ips:,.0f} |", flush=True)
        print("\nIndex build, tiny model (uit-tiny, 96x32), batch 64:\n")
        print("\n".join(index_build_table(jpg, args.workers)))


if __name__ == "__main__":
    main()
