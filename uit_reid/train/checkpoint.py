"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds model, optimiser, scheduler and grad-scaler state, the RNG states of torch
(CPU and CUDA), Python and NumPy, the position in the epoch and the global step. It is read back
with ``torch.load(weights_only=True)``: only tensors and plain containers, never code.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from uit_reid.distributed import is_distributed, world_size
from uit_reid.io import atomic_torch_save, load_torch_file

__all__ = [
    "CHECKPOINT_VERSION",
    "capture_rng_state",
    "capture_rng_states_of_all_ranks",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
]

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def seed_everything(seed: int) -> None:
    """Seed torch, Python and NumPy's global generators."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def capture_rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain lists (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def capture_rng_states_of_all_ranks() -> list[dict[str, Any]]:
    """`capture_rng_state` of every rank, in rank order (a collective call under DDP)."""
    state = capture_rng_state()
    if not is_distributed():
        return [state]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, state)
    return gathered


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Write ``state`` (plus the format version) to ``path`` via a temp file and rename."""
    path = Path(path)
    atomic_torch_save({"version": CHECKPOINT_VERSION, **state}, path)
    logger.debug("checkpoint written to %s", path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, without unpickling code."""
    state = load_torch_file(path, map_location)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a uit_reid training checkpoint (version {CHECKPOINT_VERSION})")
    return state
