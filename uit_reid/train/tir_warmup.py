"""TIR decoder warm-up: train the freshly built decoder alone on the frozen pre-trained encoders.

A new TIR decoder first learns the easy part of restoration, the average image, and sits on that
plateau for a few hundred steps before its cross-attention reads the colour words. In a short
fine-tuning run (the demo: 120 steps) it never leaves the plateau: it restores the same grey person
whatever the caption, and its gradients into the encoders carry nothing about the words. Training it
alone first, with the encoders frozen, gets it past the plateau cheaply (no encoder backward pass),
so that joint fine-tuning starts with a decoder that reads the caption. The authors' recipe trains
60 epochs and needs no warm-up; the paper configs leave it off (``train.tir_warmup_steps = 0``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from uit_reid.device import autocast
from uit_reid.distributed import is_distributed
from uit_reid.model import UITModel
from uit_reid.tir import tir_loss, tir_target
from uit_reid.train.optim import param_groups

__all__ = ["decoder_warmup_loss", "warm_up_decoder", "warm_up_run"]

logger = logging.getLogger(__name__)


def decoder_warmup_loss(model: UITModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """TIR's loss on ``batch`` with the encoders' outputs detached: only the decoder gets gradients."""
    images, ids = batch["images"], batch["text_ids"]
    with torch.no_grad():
        masked = model.tir_input(images)
        _, text_tokens = model.encoder.encode_text(ids, return_tokens=True)
    pred = model.restore(masked, ids, text_tokens)
    return tir_loss(pred, tir_target(images, model.encoder.patch_size, model.tir_target), masked.mask)


def _cycle(batches: Iterable[Mapping[str, torch.Tensor]]) -> Iterator[Mapping[str, torch.Tensor]]:
    while True:
        yield from batches


def warm_up_decoder(
    model: UITModel,
    batches: Iterable[Mapping[str, torch.Tensor]],
    steps: int,
    lr: float,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    head_lr_mult: float = 1.0,
    bias_lr_mult: float = 1.0,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model.tir_head`` alone for ``steps`` Adam steps on ``batches`` (cycled); return the losses.

    The decoder's parameter groups follow the recipe's rule (`uit_reid.train.optim.param_groups`:
    attention layers at ``lr * head_lr_mult``, biases at ``lr * bias_lr_mult``) at a constant rate;
    the encoders and the classifier are untouched (their ``requires_grad`` is restored after).
    ``callback(step, loss)`` runs after every step (a diagnostic, e.g. `evaluate_text_use`).
    """
    if model.tir_head is None:
        raise ValueError("warm_up_decoder needs a model with a TIR head")
    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("tir_head."))
    try:
        groups = param_groups(model, lr, 0.0, head_lr_mult, bias_lr_mult)
        optimizer = torch.optim.Adam(groups, lr=lr)
        losses: list[float] = []
        model.train()
        data = _cycle(batches)
        for step in tqdm(range(1, steps + 1), desc="TIR warm-up", unit="step", dynamic_ncols=True, disable=None):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(data).items()}
            with autocast(device, amp_dtype):
                loss = decoder_warmup_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step, losses[-1])
        logger.info("TIR warm-up: %d decoder steps, loss %.4f -> %.4f", steps, losses[0], losses[-1])
        return losses
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(frozen[name])


def warm_up_run(
    model: UITModel, loader: torch.utils.data.DataLoader, config: Any, device: torch.device,
    amp_dtype: torch.dtype | None = None, log: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """A training run's warm-up (`Trainer`): ``config.train.tir_warmup_steps`` decoder steps (none when 0
    or without a TIR head) on the run's epoch-0 batches at ``train.tir_warmup_lr`` (default ``optim.lr *
    optim.head_lr_mult``); ``log`` gets one record (``split: "tir_warmup"``, the first and last loss).

    Under torchrun every rank warms its own copy from the same start on its own batches; rank 0's decoder
    is then broadcast, so the replicas stay equal.
    """
    t, o = config.train, config.optim
    if model.tir_head is None or t.tir_warmup_steps == 0:
        return
    loader.batch_sampler.set_epoch(0)
    losses = warm_up_decoder(model, loader, t.tir_warmup_steps, t.tir_warmup_lr or o.lr * o.head_lr_mult,
                             device, amp_dtype)
    if is_distributed():
        for tensor in model.tir_head.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    if log is not None:
        log({"step": 0, "epoch": 0, "split": "tir_warmup", "steps": len(losses),
             "tir_first": losses[0], "tir_last": losses[-1]})
