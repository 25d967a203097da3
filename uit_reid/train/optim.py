"""Optimiser parameter groups and the warm-up + cosine learning-rate schedule (UIT's recipe)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PARAM_ROLES", "build_optimizer", "lr_factor", "param_groups", "param_role", "warmup_cosine"]

PARAM_ROLES: dict[str, str] = {
    "encoder.": "encoder",
    "classifier.": "classifier",
    "tir_head.cross_attn.": "tir_attention",
    "tir_head.decoder.": "tir_attention",
    "tir_head.": "tir_io",
}
"""Module prefix → role, first match wins. ``encoder``: the pre-trained CLIP towers;
``classifier``: the identity classifier; ``tir_attention``: the TIR decoder's cross-attention and
transformer blocks (freshly initialised, trained fast); ``tir_io``: the TIR decoder's input and
output layers (LayerNorms, embedding, mask token, pixel prediction)."""

_FAST_ROLES = ("classifier", "tir_attention")


def param_role(name: str) -> str:
    """Role of the parameter called ``name`` in a `UITModel` (see `PARAM_ROLES`)."""
    for prefix, role in PARAM_ROLES.items():
        if name.startswith(prefix):
            return role
    raise ValueError(f"parameter {name!r} has no role; known prefixes: {list(PARAM_ROLES)}")


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 5.0,
    bias_lr_mult: float = 2.0,
) -> list[dict]:
    """Optimiser groups by role (the authors' recipe): the classifier and the TIR decoder's
    attention layers train at ``lr * head_lr_mult``, the rest at ``lr``; every bias (including
    attention ``in_proj_bias``) has no weight decay and trains at ``lr * bias_lr_mult``, except the
    classifier's, which keeps ``lr * head_lr_mult``.

    Frozen parameters (``requires_grad=False``, e.g. CLIP's fixed logit scale) are left out.
    Each group carries a ``name`` (``"<role>"`` or ``"<role>_bias"``) so logs and tests can tell
    them apart; the encoder's weights come first.
    """
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_bias = name.rsplit(".", 1)[-1].endswith("bias")
        buckets.setdefault((param_role(name), is_bias), []).append(param)
    order = list(dict.fromkeys(PARAM_ROLES.values()))
    groups = []
    for (role, is_bias), params in sorted(buckets.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        fast = role in _FAST_ROLES
        if is_bias and role != "classifier":
            group_lr = lr * bias_lr_mult
        else:
            group_lr = lr * (head_lr_mult if fast else 1.0)
        groups.append(
            {
                "name": role + ("_bias" if is_bias else ""),
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
