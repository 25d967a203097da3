"""The reference trainer: config, optimiser groups and schedule, checkpoints, ``Trainer``."""

from __future__ import annotations

# moved to uit_reid.factory and uit_reid.evaluation; still importable from here
from uit_reid.evaluation import encode_split as encode_split
from uit_reid.evaluation import evaluate_model as evaluate_model
from uit_reid.factory import build_model as build_model
from uit_reid.factory import load_model as load_model
from uit_reid.train.checkpoint import load_checkpoint, save_checkpoint
from uit_reid.train.config import ConfigError, TrainConfig, bundled_config, load_config
from uit_reid.train.optim import (
    PARAM_ROLES,
    build_optimizer,
    lr_factor,
    param_groups,
    param_role,
    warmup_cosine,
)
from uit_reid.train.trainer import NonFiniteLossError, Trainer

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "PARAM_ROLES",
    "TrainConfig",
    "Trainer",
    "build_optimizer",
    "bundled_config",
    "load_checkpoint",
    "load_config",
    "lr_factor",
    "param_groups",
    "param_role",
    "save_checkpoint",
    "warmup_cosine",
]
