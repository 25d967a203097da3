"""Ablation: rank UIT's components by fine-tuning the shipped `uit-tiny` checkpoint on the demo's data.

Every training row starts from the same pre-trained weights (``model.pretrained``, the demo's:
``"synthetic"``, the shipped checkpoint) and fine-tunes with the demo's recipe (data, batch, sampler,
optimiser, decoder size) for the same number of steps; only the losses and augmentations differ:

    zero-shot                      the checkpoint, no fine-tuning
    ITC fine-tuning                symmetric InfoNCE
    SDM + ID                       IRRA's losses without MLM
    + CMT                          ... plus the cross-modal triplet loss
    + TIR                          ... plus text-guided image restoration
    + text augmentation            ... plus attribute-word captions (p 0.2)
    full UIT                       ... plus the authors' caption corruption (the paper's recipe;
                                   the demo's is "full UIT - caption corruption")
    SDM + ID + TIR                 SDM + ID with one part added (each part's effect alone, against
    SDM + ID + text augmentation   the same SDM + ID row; "+ CMT" is SDM + ID + CMT)
    full UIT - X                   full UIT without one component (X = CMT, TIR, text augmentation,
                                   caption corruption; the last is the "+ text augmentation" row)

The loss weights are the demo's where it sets them (else the paper's: SDM 1, ID 1, CMT 10, TIR 10).
Each row runs ``--seeds`` seeds (0, 1, ...; the seed draws batches, augmentations, masks and the
heads' init); the table gives the mean and the 95% confidence interval of the mean (Student's t,
n - 1 degrees of freedom) of test R1, mAP, attribute-binding accuracy and presence, R1 on the queries
whose person has a look-alike in the gallery (another test identity differing in at most two of the
generator's attribute slots: CMT's target), and, for rows with a TIR decoder, its text use
(`uit_reid.evaluation.evaluate_text_use`: the true caption restores the hidden patches better than the
colour-swapped one, percent of 512 images).

Rows with TIR start their decoder from ``--tir-pretrained`` (default: the demo config's, the decoder
shipped beside the `uit-tiny` weights); for another start, pass a decoder pre-trained on its frozen
encoders (``benchmarks/pretrain_tir_decoder.py --pretrained ...``): a fresh decoder needs a few hundred
steps before it reads the caption.

Diagnostic, printed and saved with the table:
- does the grayscale input reach the encoder? A hook on the patch embedding during one training step
  records both image passes: the retrieval pass must be colour, the TIR pass grey (R = G = B).

Usage:

    python benchmarks/ablation.py                     # the recorded table
    python benchmarks/ablation.py --quick             # a smoke run (seconds)
    python benchmarks/ablation.py --steps 150 --seeds 5 --rows "SDM + ID,full UIT"
    python benchmarks/ablation.py --pretrained synthetic-bag --tir-pretrained runs/ptd_bag/....safetensors

Writes ``<out>/ablation.json`` (every run's metrics, the summaries, the diagnostics, the settings),
``<out>/ablation.md`` (the table) and, for each row with TIR, ``<out>/tir_<row>.png``: its seed-0
model's restorations from the true and the colour-swapped caption (`uit_reid.tir_figure`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from uit_reid import retrieval  # noqa: E402
from uit_reid.data import PedesDataset, Split, build_batch_sampler, load_dataset, make_synthetic  # noqa: E402
from uit_reid.data.synthetic import _MUTABLE as _GENERATOR_SLOTS  # noqa: E402
from uit_reid.evaluation import encode_split, evaluate_model  # noqa: E402
from uit_reid.factory import build_model, load_model  # noqa: E402
from uit_reid.model import UITModel  # noqa: E402
from uit_reid.tir_figure import restoration_figure  # noqa: E402
from uit_reid.train import TrainConfig, Trainer, load_config  # noqa: E402

PAPER_WEIGHTS = {"sdm": 1.0, "id": 1.0, "cmt": 10.0, "tir": 10.0}
TEXT_AUGMENT_P = 0.2  # the paper's attribute-word augmentation probability
# A decoder sized for the tiny encoder, used when the base config has TIR off.
TINY_TIR = {"tir_width": 64, "tir_depth": 1, "tir_heads": 4}
METRICS = ("R1", "mAP", "binding", "presence", "R1_lookalike", "text_use")
"""The table's columns; ``text_use`` only where the row trains a TIR decoder."""
# The generator's attribute slots (a family member changes one or two of them), as record keys: its bag
# slot sets the bag and its colour together, its hat slot the hat's colour
SLOTS = tuple({"bag": ("bag", "bag_colour"), "hat": "hat_colour"}.get(slot, slot) for slot in _GENERATOR_SLOTS)
LOOKALIKE_SLOTS = 2

# t quantiles (0.975) for 1..30 degrees of freedom: the 95% interval of a mean of n = df + 1 runs
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def confidence_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t confidence interval of the mean (half-width nan for n < 2)."""
    mean = statistics.fmean(values)
    n = len(values)
    if n < 2:
        return mean, math.nan
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return mean, t * statistics.stdev(values) / math.sqrt(n)


def recipe(parts: set[str], full: dict[str, float]) -> dict[str, Any]:
    """Loss weights and augmentations of a row made of ``parts`` (itc, sdm, id, cmt, tir, aug, corrupt)."""
    return {
        "loss.itc": 1.0 if "itc" in parts else 0.0,
        **{f"loss.{k}": (full[k] if k in parts else 0.0) for k in ("sdm", "id", "cmt", "tir")},
        "model.tir_head": "tir" in parts,
        "data.text_augment_p": TEXT_AUGMENT_P if "aug" in parts else 0.0,
        "data.token_corruption": "corrupt" in parts,
    }


FULL = {"sdm", "id", "cmt", "tir", "aug", "corrupt"}
ROWS: dict[str, set[str] | None] = {
    "zero-shot": None,
    "ITC fine-tuning": {"itc"},
    "SDM + ID": {"sdm", "id"},
    "+ CMT": {"sdm", "id", "cmt"},
    "+ TIR": {"sdm", "id", "cmt", "tir"},
    "+ text augmentation": {"sdm", "id", "cmt", "tir", "aug"},
    "full UIT": FULL,
    "full UIT - CMT": FULL - {"cmt"},
    "full UIT - TIR": FULL - {"tir"},
    "full UIT - text augmentation": FULL - {"aug"},
    "full UIT - caption corruption": FULL - {"corrupt"},
    "SDM + ID + TIR": {"sdm", "id", "tir"},
    "SDM + ID + text augmentation": {"sdm", "id", "aug"},
}
"""The table's rows: the parts each one trains with (``None``: no training)."""


def base_config(pretrained: str | None, tir_pretrained: str | None = None) -> tuple[TrainConfig, dict[str, float]]:
    """The demo's config (the decoder sized for the tiny model) and the full-UIT loss weights."""
    config = load_config("demo_uit")
    full = {k: getattr(config.loss, k) or w for k, w in PAPER_WEIGHTS.items()}
    if not config.model.tir_head:
        config = config.override([f"model.{k}={v}" for k, v in TINY_TIR.items()])
    if pretrained is not None:
        config = config.override([f"model.pretrained={json.dumps(pretrained)}"])
    if tir_pretrained is not None:
        config = config.override([f"model.tir_pretrained={json.dumps(tir_pretrained)}"])
    return config, full


def steps_per_epoch(config: TrainConfig, dataset: PedesDataset, batch_size: int) -> int:
    """Batches in one epoch of the config's sampler over the training pairs (one per caption)."""
    assert dataset.train is not None
    pids = [r.pid for r in dataset.train.records for _ in r.captions]
    return len(build_batch_sampler(config.data.sampler, pids, batch_size, config.data.num_instances))


def scaled_schedule(config: TrainConfig, dataset: PedesDataset, steps: int, batch_size: int) -> list[str]:
    """Overrides for ``steps`` steps of ``batch_size`` whose warm-up is the same share of the run as the demo's."""
    demo_epoch = steps_per_epoch(config, dataset, config.data.batch_size)
    demo_total = min(config.train.epochs * demo_epoch, config.train.max_steps or math.inf)
    share = round(config.optim.warmup_epochs * demo_epoch) / demo_total
    epoch = steps_per_epoch(config, dataset, batch_size)
    return _overrides({"data.batch_size": batch_size, "optim.warmup_epochs": share * steps / epoch})


def _overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def train_row(config: TrainConfig, dataset: PedesDataset, out: Path, steps: int, seed: int) -> dict[str, Any]:
    """Fine-tune for ``steps`` steps; the trainer's result (test metrics of the last weights, model folder).

    ``dataset`` has no val split: no model selection, every run is scored after the same steps.
    """
    run = config.override(_overrides({
        "train.output_dir": str(out), "train.max_steps": steps, "train.epochs": 10**6, "train.seed": seed,
        "train.eval_every": 10**6, "train.log_every": 10**6,
    }))
    result = Trainer(run, dataset=dataset, overwrite=True).fit()
    model = load_model(result["model_dir"])
    r1, n = lookalike_r1(model, dataset.test, config.data.eval_batch_size)
    result["test"].update(R1_lookalike=r1, R1_lookalike_n=n)
    return result


def zero_shot(config: TrainConfig, dataset: PedesDataset) -> dict[str, float]:
    model = build_model(config.model, config.loss, num_classes=0, interpolation=config.data.interpolation)
    metrics = evaluate_model(model, dataset.test, config.data.eval_batch_size)
    r1, n = lookalike_r1(model, dataset.test, config.data.eval_batch_size)
    return {**metrics, "R1_lookalike": r1, "R1_lookalike_n": n}


def summarize(runs: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Each column's mean and 95% half-width over ``runs`` (columns a row does not measure are left out)."""
    return {k: confidence_interval([r[k] for r in runs]) for k in METRICS if all(k in r for r in runs)}


def _slots(attributes: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(tuple(attributes.get(k) for k in slot) if isinstance(slot, tuple) else attributes.get(slot)
                 for slot in SLOTS)


def lookalike_pids(split: Split, max_changes: int = LOOKALIKE_SLOTS) -> set[int]:
    """Identities of ``split`` with another identity differing in at most ``max_changes`` attribute slots."""
    people = {r.pid: _slots(r.attributes) for r in split.records if r.attributes}
    pids = sorted(people)
    found: set[int] = set()
    for i, a in enumerate(pids):
        for b in pids[i + 1 :]:
            if sum(x != y for x, y in zip(people[a], people[b], strict=True)) <= max_changes:
                found.update((a, b))
    return found


@torch.no_grad()
def lookalike_r1(model: UITModel, split: Split, batch_size: int) -> tuple[float, int]:
    """R1 (percent) over the queries whose person has a look-alike in the gallery, and their number."""
    q, q_pids, g, g_pids = encode_split(model, split, batch_size)
    lookalikes = lookalike_pids(split)
    keep = torch.tensor([int(p) in lookalikes for p in q_pids.tolist()])
    if not keep.any():
        return math.nan, 0
    return retrieval.evaluate(q[keep] @ g.t(), q_pids[keep], g_pids, ks=(1,))["R1"], int(keep.sum())


def grayscale_check(config: TrainConfig, dataset: PedesDataset) -> dict[str, float]:
    """Channel spread of the two inputs of the patch embedding during one training step with TIR.

    Measured in the space the TIR input is grey in (normalised pixels for ``tir_grayscale =
    "normalised"``, as the authors' code; pixel values otherwise): 0 means R = G = B.
    """
    from uit_reid.data import build_train_loader

    model = build_model(config.model, config.loss, dataset.num_classes, interpolation=config.data.interpolation)
    loader = build_train_loader(dataset.train, model.encoder.tokenize, model.image_size,
                                batch_size=config.data.batch_size, num_workers=0)
    batch = next(iter(loader))
    seen: list[torch.Tensor] = []
    hook = model.encoder.clip.visual.conv1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        model.train()
        model(batch)
    finally:
        hook.remove()
    mean = torch.tensor(model.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.image_std).view(1, 3, 1, 1)

    def spread(x: torch.Tensor) -> float:
        if model.tir_grayscale != "normalised":
            x = x * std + mean
        return float((x.amax(dim=1) - x.amin(dim=1)).abs().max())

    return {"patch_embedding_calls": len(seen), "retrieval_pass_channel_spread": spread(seen[0]),
            "tir_pass_channel_spread": spread(seen[-1]) if len(seen) > 1 else math.nan}


def markdown(summary: dict[str, dict[str, Any]], steps: int, batch: int, seeds: int, pretrained: str) -> str:
    lines = [f"Fine-tuning `uit-tiny` (pretrained={pretrained!r}) for {steps} steps of batch {batch}, {seeds} "
             "seeds per row; mean ± 95% CI half-width (t), test split. R1 look-alike: R1 over the queries whose "
             "person has a look-alike; text use: the TIR decoder's (true vs colour-swapped caption), — where "
             "the row has no decoder.", "",
             "| row | R1 | mAP | binding | presence | R1 look-alike | text use |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        cells = []
        for key in METRICS:
            if key not in s:
                cells.append("—")
                continue
            mean, half = s[key]
            cells.append(f"{mean:.1f}" if math.isnan(half) else f"{mean:.1f} ± {half:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    out = Path(args.out)
    config, full = base_config(args.pretrained, args.tir_pretrained)
    syn = config.synthetic
    if args.quick:
        syn.num_ids, syn.images_per_id, syn.num_val_ids, syn.num_test_ids = 40, 2, 0, 12
        args.batch_size = 8
        config = config.override(["data.batch_size=8"])  # the warm-up share is taken at this batch too
    data_root = out / "data"
    if not (data_root / "annotations.jsonl").is_file():
        make_synthetic(data_root, num_ids=syn.num_ids, images_per_id=syn.images_per_id, seed=syn.seed,
                       num_val_ids=syn.num_val_ids, num_test_ids=syn.num_test_ids, workers=syn.workers,
                       progress=False)
    dataset = dataclasses.replace(load_dataset(data_root, progress=False), val=None)
    batch = args.batch_size or config.data.batch_size
    config = config.override(scaled_schedule(config, dataset, args.steps, batch))
    rows = {name: ROWS[name] for name in (args.rows.split(",") if args.rows else ROWS)}
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; test split {dataset.test.num_ids} ids, "
        f"{dataset.test.num_images} images; {args.steps} steps of batch {batch}; {args.seeds} seeds; "
        f"pretrained {config.model.pretrained!r}; full-UIT weights {full}")
    start, load_start = time.perf_counter(), os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, list[float]] = {}
    done: dict[frozenset[str], str] = {}
    for name, parts in rows.items():
        if parts is None:
            runs[name], seconds[name] = [zero_shot(config, dataset)], [0.0]
        elif frozenset(parts) in done:  # the same recipe under another name: the same runs
            runs[name], seconds[name] = runs[done[frozenset(parts)]], seconds[done[frozenset(parts)]]
        else:
            done[frozenset(parts)] = name
            row_config = config.override(_overrides(recipe(parts, full)))
            runs[name], seconds[name] = [], []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                result = train_row(row_config, dataset, out / "runs" / f"{len(done)}_{seed}", args.steps, seed)
                seconds[name].append(time.perf_counter() - t0)
                runs[name].append(result["test"])
                if seed == 0 and "tir" in parts:  # the TIR picture of the row's first run
                    figure = out / f"tir_{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}.png"
                    restoration_figure(load_model(result["model_dir"]), dataset.test).save(figure)
        s = summarize(runs[name])
        log(f"  {name}: " + "  ".join(f"{k} {m:.2f}±{h:.2f}" for k, (m, h) in s.items())
            + f"  ({statistics.fmean(seconds[name]):.0f} s/run)")
    summary = {name: summarize(rs) for name, rs in runs.items()}

    diagnostics: dict[str, Any] = {}
    diagnostics["grayscale_input"] = grayscale_check(config.override(_overrides(recipe(FULL, full))), dataset)
    log(f"diagnostics: {json.dumps(diagnostics)}")
    table = markdown(summary, args.steps, batch, args.seeds, config.model.pretrained)
    report = {
        "settings": {"threads": torch.get_num_threads(), "steps": args.steps, "batch_size": batch,
                     "lr": config.optim.lr, "warmup_epochs": config.optim.warmup_epochs, "seeds": args.seeds, "full_weights": full,
                     "pretrained": config.model.pretrained, "tir_pretrained": config.model.tir_pretrained,
                     "load_average_start": load_start, "load_average_end": os.getloadavg(), "recipes": {n: sorted(p) if p else None for n, p in rows.items()},
                     "test": {"ids": dataset.test.num_ids, "images": dataset.test.num_images}},
        "runs": runs, "seconds": seconds,
        "summary": {n: {k: {"mean": m, "ci95": h} for k, (m, h) in s.items()} for n, s in summary.items()},
        "diagnostics": diagnostics, "total_seconds": time.perf_counter() - start,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    (out / "ablation.md").write_text(table + "\n")
    log(table)
    log(f"total {report['total_seconds']:.0f} s")
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ablation", help="folder for the data, the runs and the results")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per training row (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=24, help="fine-tuning steps per run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="fine-tuning batch (default: %(default)s; 0: the demo's)")
    parser.add_argument("--rows", default="", help="comma-separated row names to run (default: all)")
    parser.add_argument("--pretrained", default=None,
                        help="starting weights instead of the demo config's model.pretrained (e.g. a file, 'none')")
    parser.add_argument("--tir-pretrained", default=None,
                        help="the TIR decoder's start instead of the demo config's model.tir_pretrained (a file, 'none')")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: %(default)s; on the shared 2-core machine two threads ran "
                        "~10x slower than one under contention)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny data and batch, 2 seeds, 2 steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.steps = min(args.seeds, 2), 2
    logging.basicConfig(level=logging.WARNING)
    return run(args)


if __name__ == "__main__":
    main()
