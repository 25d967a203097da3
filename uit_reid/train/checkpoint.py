"""Training checkpoints (re-exported): the format lives in `uit_reid.checkpoint`, below the trainer,
because loading a trained model for inference (`uit_reid.factory.load_model`) reads it too."""

from __future__ import annotations

from uit_reid.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    capture_rng_state,
    capture_rng_states_of_all_ranks,
    check_run_dir,
    load_checkpoint,
    previous_checkpoint,
    restore_rng_state,
    restore_training_state,
    save_checkpoint,
    seed_everything,
)

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "capture_rng_state",
    "capture_rng_states_of_all_ranks",
    "check_run_dir",
    "load_checkpoint",
    "previous_checkpoint",
    "restore_rng_state",
    "restore_training_state",
    "save_checkpoint",
    "seed_everything",
]
