"""The reference trainer: config, optimiser groups and schedule, checkpoints, ``Trainer``."""

from __future__ import annotations

from uit_reid.train.checkpoint import load_checkpoint, save_checkpoint
from uit_reid.train.config import ConfigError, TrainConfig, bundled_config, load_config
from uit_reid.train.optim import build_optimizer, lr_factor, param_groups, param_role, warmup_cosine
from uit_reid.train.trainer import (
    NonFiniteLossError,
    Trainer,
    build_model,
    encode_split,
    evaluate_model,
    load_model,
)

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "build_model",
    "build_optimizer",
    "bundled_config",
    "encode_split",
    "evaluate_model",
    "load_checkpoint",
    "load_config",
    "load_model",
    "lr_factor",
    "param_groups",
    "param_role",
    "save_checkpoint",
    "warmup_cosine",
]
