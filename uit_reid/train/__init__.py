"""The reference trainer: config, optimiser groups and schedule, ``Trainer``.

Its training checkpoints (``last.pt``) are read and written by `uit_reid.checkpoint`.

Names are imported on first use, so ``uit_reid.train.config`` (and reading a config) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_OBJECTS = {
    "ConfigError": "uit_reid.train.config",
    "TrainConfig": "uit_reid.train.config",
    "bundled_config": "uit_reid.train.config",
    "load_config": "uit_reid.train.config",
    "PARAM_ROLES": "uit_reid.train.optim",
    "build_optimizer": "uit_reid.train.optim",
    "lr_factor": "uit_reid.train.optim",
    "param_groups": "uit_reid.train.optim",
    "param_role": "uit_reid.train.optim",
    "warmup_cosine": "uit_reid.train.optim",
    "NonFiniteLossError": "uit_reid.train.trainer",
    "Trainer": "uit_reid.train.trainer",
}

if TYPE_CHECKING:
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
    "load_config",
    "lr_factor",
    "param_groups",
    "param_role",
    "warmup_cosine",
]


def __getattr__(name: str) -> Any:
    if name not in _OBJECTS:
        raise AttributeError(f"module 'uit_reid.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_OBJECTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
