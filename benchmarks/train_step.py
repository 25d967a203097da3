"""Training-step throughput of UITModel: step time, images/s and peak memory.

Prints one markdown table. On CPU it measures the tiny model (the demo's); on a CUDA device it
measures ViT-B/16 at 384x128, batch 128, in fp32 (TF32), bf16 autocast and bf16 + torch.compile,
each with and without TIR (all four UIT losses when TIR is on). Inputs are random tensors, so the
figures are the model's, not the data loader's (see benchmarks/data_loader.py for that).

    python benchmarks/train_step.py                 # whatever this machine has
    python benchmarks/train_step.py --quick         # fewer steps
    python benchmarks/train_step.py --models vit-b-16 --batch-size 128
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from uit_reid import CLIPDualEncoder, TIRHead, UITModel  # noqa: E402
from uit_reid.train import build_optimizer  # noqa: E402


@dataclass
class Case:
    model: str
    image_size: tuple[int, int]
    batch_size: int
    precision: str  # fp32 | bf16
    compile: bool
    tir: bool
    tir_width: int
    tir_depth: int


def _random_batch(encoder: CLIPDualEncoder, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 49000, (batch_size, encoder.context_length), generator=gen)
    lengths = torch.randint(10, 60, (batch_size,), generator=gen)
    for row, length in enumerate(lengths.tolist()):
        ids[row, 0] = 49406
        ids[row, length] = 49407  # EOT: the argmax
        ids[row, length + 1 :] = 0
    return {
        "images": torch.randn(batch_size, 3, *encoder.image_size, generator=gen).to(device),
        "text_ids": ids.to(device),
        "pids": (torch.arange(batch_size) // 2).to(device),
    }


def run_case(case: Case, device: torch.device, warmup: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    encoder = CLIPDualEncoder.from_open_clip(case.model, image_size=case.image_size)
    head = (
        TIRHead(encoder.embed_dim, encoder.grid_size, encoder.patch_size, width=case.tir_width,
                depth=case.tir_depth, heads=max(1, case.tir_width // 64))
        if case.tir
        else False
    )
    weights = {"tir": 10.0 if case.tir else 0.0}
    model = UITModel(encoder, num_classes=case.batch_size // 2, tir_head=head, loss_weights=weights).to(device)
    optimizer = build_optimizer(model, lr=1e-5, weight_decay=4e-5)
    forward = torch.compile(model) if case.compile else model
    batch = _random_batch(encoder, case.batch_size, device)
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16) if case.precision == "bf16" else contextlib.nullcontext()
    )

    def step() -> None:
        with amp:
            loss = forward(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"step_ms": elapsed * 1e3, "images_per_s": case.batch_size / elapsed, "peak_gib": peak}


def cases_for(device: torch.device, models: list[str], batch_size: int | None) -> list[Case]:
    out: list[Case] = []
    for name in models:
        if name == "uit-tiny":
            size, bs, tir_width, tir_depth = (96, 32), batch_size or 128, 64, 1
        else:
            size, bs, tir_width, tir_depth = (384, 128), batch_size or 128, 512, 4
        precisions = [("fp32", False)]
        if device.type == "cuda":
            precisions += [("bf16", False), ("bf16", True)]
        for precision, compiled in precisions:
            for tir in (False, True):
                out.append(Case(name, size, bs, precision, compiled, tir, tir_width, tir_depth))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default=None, help="comma-separated: uit-tiny, ViT-B-16")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    models = args.models.split(",") if args.models else (["ViT-B-16"] if device.type == "cuda" else ["uit-tiny"])
    warmup, steps = (2, 5) if args.quick else (5, 20)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}")
    print("| model | input | batch | precision | compile | TIR | step ms | images/s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in cases_for(device, models, args.batch_size):
        w = warmup + (3 if case.compile else 0)
        r = run_case(case, device, w, steps)
        peak = "—" if math.isnan(r["peak_gib"]) else f"{r['peak_gib']:.1f}"
        print(
            f"| {case.model} | {case.image_size[0]}x{case.image_size[1]} | {case.batch_size} | {case.precision} | "
            f"{'yes' if case.compile else 'no'} | {'on' if case.tir else 'off'} | {r['step_ms']:.1f} | "
            f"{r['images_per_s']:,.0f} | {peak} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
