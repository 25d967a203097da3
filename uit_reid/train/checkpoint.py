"""Training checkpoints (re-exported): the format lives in `uit_reid.checkpoint`, below the trainer,
because loading a trained model for inference (`uit_reid.factory.load_model`) reads it too."""

from __future__ import annotations

from uit_reid import checkpoint as _checkpoint
from uit_reid.checkpoint import *  # noqa: F403 (the names of its __all__)

__all__ = list(_checkpoint.__all__)
