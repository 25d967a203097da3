"""What a training run is built from, besides the model: its dataset, its train loader, its optimiser.

`uit_reid.train.Trainer` calls these once, in this order; each reads only the config and what the
one before it built, so a custom loop can build the same pieces without the trainer.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist

from uit_reid import augment
from uit_reid.data import JSONL_NAME, PedesDataset, Split, build_train_loader, load_dataset, make_synthetic
from uit_reid.distributed import is_distributed
from uit_reid.model import UITModel
from uit_reid.train.config import TrainConfig
from uit_reid.train.optim import build_optimizer, warmup_cosine

logger = logging.getLogger(__name__)


def run_dataset(config: TrainConfig, is_main: bool) -> PedesDataset:
    """Read ``data.root``, rank 0 first writing the synthetic dataset there if the config asks for it."""
    root, syn = Path(config.data.root), config.synthetic
    if syn.generate and is_main and not (root / JSONL_NAME).is_file():
        logger.info("generating the synthetic dataset in %s", root)
        make_synthetic(root, num_ids=syn.num_ids, images_per_id=syn.images_per_id, seed=syn.seed,
                       num_val_ids=syn.num_val_ids, num_test_ids=syn.num_test_ids, workers=syn.workers,
                       world=syn.world)
    if syn.generate and is_distributed():
        dist.barrier()  # the other ranks wait for rank 0's files
    d = config.data
    return load_dataset(d.root, format=d.format, on_missing=d.on_missing)


def train_loader(config: TrainConfig, model: UITModel, train: Split, device: torch.device) -> torch.utils.data.DataLoader:
    """The train loader: the model's size, resize (``data.interpolation``, recorded in it) and normalisation."""
    d = config.data
    transform = model.train_transform(padding=d.padding, erasing_p=d.erasing_p, erasing_fill=d.erasing_fill)
    tokens = augment.TokenCorruption.for_tokenizer(model.encoder.tokenizer) if d.token_corruption else None
    return build_train_loader(
        train, model.encoder.tokenize, tuple(config.model.image_size), d.batch_size,
        sampler=d.sampler, num_instances=d.num_instances, num_workers=d.num_workers,
        text_augment_p=d.text_augment_p, token_augment=tokens, transform=transform,
        seed=config.train.seed, pin_memory=device.type == "cuda", batch_multiple=config.optim.accum_steps,
    )


class Optimisation(NamedTuple):
    """The optimiser, its warm-up + cosine schedule, the grad scaler (on for fp16 only) and the step counts."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    total_steps: int


def optimisation(
    config: TrainConfig, model: UITModel, loader: torch.utils.data.DataLoader, device: torch.device,
    amp_dtype: torch.dtype | None,
) -> Optimisation:
    """`Optimisation` of ``model`` over ``train.epochs`` of ``loader`` (at most ``train.max_steps`` steps)."""
    o, t = config.optim, config.train
    steps_per_epoch = loader.batch_sampler.batches_per_epoch // o.accum_steps
    total_steps = min(t.epochs * steps_per_epoch, t.max_steps or math.inf)
    optimizer = build_optimizer(model, o.lr, o.weight_decay, tuple(o.betas), o.eps, o.head_lr_mult, o.bias_lr_mult)
    warmup_steps = int(round(o.warmup_epochs * steps_per_epoch))
    scheduler = warmup_cosine(optimizer, total_steps, warmup_steps, o.warmup_factor, o.min_lr_factor)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return Optimisation(optimizer, scheduler, scaler, steps_per_epoch, total_steps)
