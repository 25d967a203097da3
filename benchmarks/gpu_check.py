"""One-command GPU check: UIT step throughput, a plain open_clip reference, JPEG inference, NCCL smoke run.

On a CUDA machine (sized for under 8 minutes; not yet timed on one) this measures, and prints as one
JSON object and a Markdown table:

1. the full UIT training step (ViT-B/16, 384x128, batch 128, Adam) in fp32 (TF32), bf16 autocast and
   bf16 + ``torch.compile`` (forward and losses in one graph, backward compiled with it), each with
   TIR on and off, with the peak GPU memory of each;
2. a plain open_clip contrastive loop (``open_clip.ClipLoss``, AdamW) on the same card in the same run,
   as the reference for what the card gives a CLIP step;
3. inference images/s from JPEG files at 384x128 through the library's gallery loader (workers, pinned
   memory, non-blocking copies, bf16), end to end and encode-only;
4. a 1-GPU ``torchrun`` smoke run of the reference trainer over NCCL (tiny model, synthetic data);
5. ``uit-reid encode`` under a 1-GPU ``torchrun`` over the same JPEG files into embedding shards
   (images/s of the whole command, process start-up included; fp32 as the command runs).

Exit status: 0 when every part ran, 1 when any part failed (the JSON says which and why), 3 when no
CUDA device is present (nothing is measured; the JSON says so). Usage:

    python benchmarks/gpu_check.py [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import Case, run_case  # noqa: E402

NO_CUDA_EXIT = 3
GOAL_UIT_IMAGES_PER_S = 2000


@dataclass(frozen=True)
class Setup:
    """What the check runs on. The CUDA setup is the real check; the dry run exercises every code path
    on a CPU with the tiny model (so the script itself is tested where no GPU is at hand)."""

    device: torch.device
    model: str
    image_size: tuple[int, int]
    batch: int
    tir_width: int
    tir_depth: int
    compile: bool
    warmup: int
    steps: int
    jpeg_ids: int
    backend: str

    @classmethod
    def cuda(cls, quick: bool) -> Setup:
        return cls(torch.device("cuda"), "ViT-B-16", (384, 128), 128, 512, 4, True,
                   2 if quick else 3, 5 if quick else 10, 256 if quick else 1024, "nccl")

    @classmethod
    def cpu_dry_run(cls) -> Setup:
        return cls(torch.device("cpu"), "uit-tiny", (96, 32), 8, 32, 1, False, 1, 1, 8, "gloo")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(setup: Setup, step: Callable[[], None], warmup: int, batch: int) -> dict[str, float]:
    """Run ``step`` ``warmup`` times, reset the peak-memory counter, time ``setup.steps`` more."""
    for _ in range(warmup):
        step()
    _sync(setup.device)
    cuda = setup.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(setup.steps):
        step()
    _sync(setup.device)
    seconds = (time.perf_counter() - start) / setup.steps
    return {"step_ms": seconds * 1e3, "images_per_s": batch / seconds,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def _variants(setup: Setup) -> list[tuple[str, bool]]:
    out = [("fp32", False), ("bf16", False)]
    return out + [("bf16", True)] if setup.compile else out


def uit_steps(setup: Setup) -> list[dict[str, Any]]:
    """The full UIT step (all four losses with TIR on; SDM + ID + CMT with it off) in each variant."""
    rows = []
    for precision, compiled in _variants(setup):
        for tir in (False, True):
            case = Case(setup.model, setup.image_size, setup.batch, precision, compiled, tir,
                        tir_width=setup.tir_width, tir_depth=setup.tir_depth)
            result = run_case(case, setup.device, setup.warmup + (3 if compiled else 0), setup.steps)
            if result["peak_gib"] != result["peak_gib"]:  # NaN off CUDA
                result["peak_gib"] = None
            tf32 = precision == "fp32" and setup.device.type == "cuda"
            rows.append({"part": "uit_step", "precision": "fp32 (TF32)" if tf32 else precision,
                         "compile": compiled, "tir": tir, **result})
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def open_clip_reference(setup: Setup) -> list[dict[str, Any]]:
    """A plain open_clip contrastive training step (``ClipLoss``, fused AdamW): the card's reference."""
    import open_clip

    from uit_reid import CLIPDualEncoder

    rows = []
    for precision, compiled in _variants(setup):
        torch.manual_seed(0)
        # the same architecture UIT trains (CLIPDualEncoder wraps exactly this open_clip model)
        model = CLIPDualEncoder.from_open_clip(setup.model, image_size=setup.image_size).clip.to(setup.device)
        loss_fn = open_clip.ClipLoss()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
        forward = torch.compile(model) if compiled else model
        images = torch.randn(setup.batch, 3, *setup.image_size, device=setup.device)
        texts = torch.randint(1, 49000, (setup.batch, 77), device=setup.device)
        amp = (torch.autocast(setup.device.type, dtype=torch.bfloat16) if precision == "bf16"
               else contextlib.nullcontext())

        def step(forward=forward, optimizer=optimizer, loss_fn=loss_fn, images=images, texts=texts, amp=amp,
                 scale=model.logit_scale) -> None:
            with amp:
                image_features, text_features, _ = forward(images, texts)[:3]
                loss = loss_fn(image_features, text_features, scale.exp())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        result = _timed(setup, step, setup.warmup + (3 if compiled else 0), setup.batch)
        tf32 = precision == "fp32" and setup.device.type == "cuda"
        rows.append({"part": "open_clip_contrastive", "precision": "fp32 (TF32)" if tf32 else precision,
                     "compile": compiled, "tir": None, **result})
        del model, optimizer, forward
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def jpeg_inference(setup: Setup, workdir: Path) -> list[dict[str, Any]]:
    """Gallery encoding from JPEG files through the library's loader: end to end, and encode-only."""
    from data_loader import write_jpeg_dataset

    from uit_reid import CLIPDualEncoder, UITModel
    from uit_reid.data import build_eval_loaders, load_dataset

    root = write_jpeg_dataset(workdir / "jpeg", num_ids=setup.jpeg_ids, size=setup.image_size)
    split = load_dataset(root).train
    torch.manual_seed(0)
    encoder = CLIPDualEncoder.from_open_clip(setup.model, image_size=setup.image_size)
    model = UITModel(encoder, 0, tir_head=False).to(setup.device).eval()
    workers = min(8, os.cpu_count() or 1)
    batch_size = 256 if setup.device.type == "cuda" else 16
    loader, _ = build_eval_loaders(split, encoder.tokenize, setup.image_size, batch_size=batch_size,
                                   num_workers=workers)
    amp = torch.autocast(setup.device.type, dtype=torch.bfloat16)

    def one_pass() -> int:
        n = 0
        for batch in loader:
            model.encode_image(batch["images"].to(setup.device, non_blocking=True), normalize=True)
            n += batch["images"].shape[0]
        _sync(setup.device)
        return n

    with amp, torch.no_grad():
        one_pass()  # warm-up: worker start-up, kernel selection, page cache
        start = time.perf_counter()
        n = one_pass()
        end_to_end = n / (time.perf_counter() - start)
        images = next(iter(loader))["images"].to(setup.device)
        encode = _timed(setup, lambda: model.encode_image(images, normalize=True), 2, images.shape[0])
    return [
        {"part": "inference_jpeg_end_to_end", "precision": "bf16", "workers": workers, "images": n,
         "images_per_s": end_to_end},
        {"part": "inference_encode_only", "precision": "bf16", "batch": images.shape[0],
         "images_per_s": encode["images_per_s"], "peak_gib": encode["peak_gib"]},
    ]


SMOKE_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from uit_reid.train import TrainConfig, Trainer
    backend, steps = sys.argv[2], int(sys.argv[3])
    dist.init_process_group(backend)
    device = "cuda" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(0)
    probe = torch.ones(1, device=device)
    dist.all_reduce(probe)
    assert probe.item() == dist.get_world_size(), probe
    result = Trainer(TrainConfig.from_toml(sys.argv[1])).fit()
    assert result["steps"] == steps, result
    """
)


def torchrun_smoke(setup: Setup, workdir: Path) -> list[dict[str, Any]]:
    """A 1-process ``torchrun`` run of the reference trainer (tiny model, synthetic data) over
    ``setup.backend`` (NCCL on the GPU)."""
    from uit_reid.train import TrainConfig

    run, steps = workdir / "smoke", 20 if setup.device.type == "cuda" else 2
    config = TrainConfig.from_dict({
        "model": {"tower": "uit-tiny", "pretrained": "none", "image_size": [96, 32], "tir_head": True,
                  "tir_width": 64, "tir_depth": 1, "tir_heads": 4},
        "data": {"root": str(workdir / "synthetic"), "batch_size": 32, "num_workers": 2},
        "synthetic": {"generate": True, "num_ids": 64, "images_per_id": 2, "num_val_ids": 8,
                      "num_test_ids": 8},
        "train": {"epochs": 100, "max_steps": steps, "device": setup.device.type,
                  "precision": "bf16" if setup.device.type == "cuda" else "fp32",
                  "output_dir": str(run), "log_every": 1},
    })
    config_path = workdir / "smoke.toml"
    config_path.write_text(config.to_toml())
    script = workdir / "smoke.py"
    script.write_text(SMOKE_SCRIPT)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(script),
         str(config_path), setup.backend, str(steps)],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "split" not in r]
    return [{"part": f"torchrun_{setup.backend}_smoke", "steps": train[-1]["step"],
             "final_loss": train[-1]["loss"], "seconds": time.perf_counter() - start}]


def encode_shards_run(setup: Setup, workdir: Path) -> list[dict[str, Any]]:
    """`uit-reid encode` under a 1-process torchrun over the JPEG gallery, timed end to end."""
    from data_loader import write_jpeg_dataset

    from uit_reid import CLIPDualEncoder, UITModel

    root = workdir / "jpeg" / "jpg"  # the inference part's files, when it ran
    if not root.is_dir():
        root = write_jpeg_dataset(workdir / "jpeg", num_ids=setup.jpeg_ids, size=setup.image_size)
    torch.manual_seed(0)
    model_dir = workdir / "encode-model"
    UITModel(CLIPDualEncoder.from_open_clip(setup.model, image_size=setup.image_size), 0,
             tir_head=False).save_pretrained(model_dir)
    out = workdir / "emb"
    workers = min(8, os.cpu_count() or 1)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "uit_reid.cli",
         "encode", "--model", str(model_dir), "--images", str(root), "--out", str(out), "--shard-size", "1024",
         "--batch-size", str(256 if setup.device.type == "cuda" else 16), "--workers", str(workers),
         "--device", setup.device.type],
        capture_output=True, text=True, timeout=600,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"uit-reid encode exited {proc.returncode}: {proc.stderr[-2000:]}")
    n = json.loads((out / "manifest.json").read_text())["encoded"]
    return [{"part": "encode_shards", "precision": "fp32", "workers": workers, "images": n,
             "seconds": seconds, "images_per_s": n / seconds}]


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| part | precision | compile | TIR | step ms | images/s | peak GiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["part"].startswith("torchrun_"):
            lines.append(f"| {r['part']} ({r['steps']} steps, final loss {r['final_loss']:.3f}, "
                         f"{r['seconds']:.0f} s) | - | - | - | - | - | - |")
            continue
        tir = {None: "-", True: "on", False: "off"}[r.get("tir")]
        compiled = {None: "-", True: "yes", False: "no"}[r.get("compile")]
        step_ms = f"{r['step_ms']:.1f}" if "step_ms" in r else "-"
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
        lines.append(f"| {r['part']} | {r['precision']} | {compiled} | {tir} | {step_ms} | "
                     f"{r['images_per_s']:,.0f} | {peak} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON object to this file")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps and images")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run every part on the CPU with the tiny model (tests the script; measures nothing)")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version()}
    if args.cpu_dry_run:
        setup = Setup.cpu_dry_run()
        report["device"] = "CPU dry run (tiny model; not a measurement)"
    elif not torch.cuda.is_available():
        report.update(status="no_cuda", message="no CUDA device is present: nothing was measured")
        print(json.dumps(report))
        print(f"gpu_check: no CUDA device is present; nothing was measured (exit {NO_CUDA_EXIT})", file=sys.stderr)
        return NO_CUDA_EXIT
    else:
        setup = Setup.cuda(args.quick)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        report["device"] = torch.cuda.get_device_name(0)
    report["setup"] = {"model": setup.model, "image_size": list(setup.image_size), "batch": setup.batch,
                       "cpu_cores": os.cpu_count()}
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        parts: dict[str, Callable[[], list[dict[str, Any]]]] = {
            "uit_step": lambda: uit_steps(setup),
            "open_clip_contrastive": lambda: open_clip_reference(setup),
            "inference_jpeg": lambda: jpeg_inference(setup, workdir),
            "torchrun_smoke": lambda: torchrun_smoke(setup, workdir),
            "encode_shards": lambda: encode_shards_run(setup, workdir),
        }
        for name, part in parts.items():
            part_start = time.perf_counter()
            try:
                rows.extend(part())
            except Exception:  # every part runs; the exit status reports any failure
                failures[name] = traceback.format_exc(limit=4)
            print(f"gpu_check: {name} took {time.perf_counter() - part_start:.0f} s", file=sys.stderr, flush=True)
    with_tir = [r["images_per_s"] for r in rows if r["part"] == "uit_step" and r["tir"]]
    report.update(
        status="failed" if failures else "ok",
        seconds=round(time.perf_counter() - start, 1),
        rows=rows,
        failures=failures,
        goal={"uit_step_images_per_s": GOAL_UIT_IMAGES_PER_S, "best_uit_step_with_tir": max(with_tir, default=None)},
    )
    text = json.dumps(report)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    size = "x".join(map(str, setup.image_size))
    print(f"\n{report['device']}; torch {torch.__version__}; {setup.model} {size}, batch {setup.batch}\n")
    print(_table(rows))
    for name, error in failures.items():
        print(f"\nFAILED {name}:\n{error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
