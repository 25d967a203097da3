"""Optimiser parameter groups and the warm-up + cosine learning-rate schedule (UIT's recipe)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["DEFAULT_HEAD_PREFIXES", "build_optimizer", "lr_factor", "param_groups", "warmup_cosine"]

DEFAULT_HEAD_PREFIXES: tuple[str, ...] = ("classifier.", "tir_head.cross_attn.")
"""Modules trained at ``head_lr_mult`` x the base learning rate: freshly initialised heads."""


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 5.0,
    bias_lr_mult: float = 2.0,
    head_prefixes: Sequence[str] = DEFAULT_HEAD_PREFIXES,
) -> list[dict]:
    """One group per trainable parameter kind: heads get ``lr * head_lr_mult``; biases get
    ``lr * bias_lr_mult`` (x ``head_lr_mult`` inside heads) and no weight decay.

    Frozen parameters (``requires_grad=False``, e.g. CLIP's fixed logit scale) are left out.
    Each group carries a ``name`` so logs and tests can tell them apart.
    """
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = name.startswith(tuple(head_prefixes))
        buckets.setdefault((is_head, name.endswith(".bias")), []).append(param)
    groups = []
    for (is_head, is_bias), params in sorted(buckets.items()):
        group_lr = lr * (head_lr_mult if is_head else 1.0) * (bias_lr_mult if is_bias else 1.0)
        groups.append(
            {
                "name": ("head" if is_head else "backbone") + ("_bias" if is_bias else ""),
                "params": params,
                "lr": group_lr,
                "initial_lr": group_lr,
                "weight_decay": 0.0 if is_bias else weight_decay,
            }
        )
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-3,
    head_lr_mult: float = 5.0,
    bias_lr_mult: float = 2.0,
) -> torch.optim.Adam:
    """Adam over `param_groups` (UIT: betas 0.9/0.999, eps 1e-3, weight decay 4e-5)."""
    groups = param_groups(model, lr, weight_decay, head_lr_mult, bias_lr_mult)
    return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps)


def lr_factor(step: int, total_steps: int, warmup_steps: int, warmup_factor: float, min_factor: float = 0.0) -> float:
    """Multiplier of the base lr at ``step``: linear from ``warmup_factor`` to 1 over the warm-up,
    then a cosine from 1 down to ``min_factor`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_factor + (1.0 - warmup_factor) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    warmup_factor: float = 0.1,
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following `lr_factor` for every group."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, warmup_factor, min_factor)
    )
