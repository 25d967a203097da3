"""Convert a full-size IRRA/SEN-layout checkpoint (ViT-B/16 at 384x128, random weights) and check it.

Builds the checkpoint the peers' trainers write (fp16 linear/attention weights, ``configs.yaml``
beside it, SEN's decoder with 4 blocks), then times `uit_reid.convert_model` and
`UITModel.save_pretrained`, and compares the converted image and text features, and the SEN
decoder's pixels, with the independent OpenAI-CLIP forward pass of the test suite
(``tests/peer_layouts.py``). Usage:

    python benchmarks/convert_checkpoint.py [--layout irra|sen] [--batch 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from peer_layouts import (  # noqa: E402
    as_irra_dtypes,
    openai_clip_state,
    reference_features,
    reference_sen_decoder,
    sen_decoder_state,
)

from uit_reid import UITModel, convert_model  # noqa: E402

GRID, PATCH, EMBED = (24, 8), 16, 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sen", choices=["irra", "sen"])
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    clip = openai_clip_state(0, grid=GRID, patch=PATCH, vision_width=768, vision_layers=12, text_width=512,
                             text_layers=12, context_length=77, embed_dim=EMBED)
    state = {"base_model." + k: v for k, v in as_irra_dtypes(clip).items()}
    state["classifier.weight"] = torch.randn(11003, EMBED).half()
    state["classifier.bias"] = torch.zeros(11003).half()
    decoder = sen_decoder_state(1, EMBED, GRID, PATCH, depth=4) if args.layout == "sen" else {}
    state.update(decoder)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best.pth"
        torch.save({"model": state, "num_epoch": 60, "epoch": 60}, path)
        (Path(tmp) / "configs.yaml").write_text(yaml.dump({"img_size": (384, 128), "stride_size": 16,
                                                           "dataset_name": "CUHK-PEDES"}))
        size_mb = path.stat().st_size / 2**20
        start = time.perf_counter()
        model = convert_model(path)
        convert_s = time.perf_counter() - start
        start = time.perf_counter()
        model.save_pretrained(Path(tmp) / "model")
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        model = UITModel.from_pretrained(Path(tmp) / "model").eval()
        load_s = time.perf_counter() - start

    reference = {k[len("base_model."):]: v.float() for k, v in state.items() if k.startswith("base_model.")}
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 384, 128, generator=gen)
    ids = model.encoder.tokenize(["a man in a red shirt and blue jeans carrying a black backpack"] * args.batch)
    want_image, want_text = reference_features(reference, images, ids)
    image_diff = (model.encoder.encode_image(images) - want_image).abs().max().item()
    text_diff = (model.encoder.encode_text(ids) - want_text).abs().max().item()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, no GPU used")
    print(f"{args.layout} checkpoint, ViT-B/16 at 384x128: {size_mb:.0f} MiB")
    print(f"convert_model {convert_s:.1f} s, save_pretrained {save_s:.1f} s, from_pretrained {load_s:.1f} s")
    print(f"max |feature difference| vs the reference forward (fp32, batch {args.batch}): "
          f"image {image_diff:.2e}, text {text_diff:.2e}")
    if decoder:
        keep = round(GRID[0] * GRID[1] * 0.3)
        ids_restore = torch.stack([torch.randperm(GRID[0] * GRID[1], generator=gen) for _ in range(args.batch)])
        visible = torch.randn(args.batch, 1 + keep, EMBED, generator=gen)
        text = torch.randn(args.batch, 77, EMBED, generator=gen)
        got = model.tir_head(visible, ids_restore, text)
        want = reference_sen_decoder(decoder, visible, text, ids_restore)
        print(f"max |pixel difference| of the SEN decoder: {(got - want).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
