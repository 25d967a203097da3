"""Reproducible epochs: per-item random streams and a batch plan that can start mid-epoch.

A training sample's random flips, crops, erasing and text augmentation depend only on
``(seed, epoch, index)``, never on which worker loads it or whether the run was resumed; an epoch's
batches depend only on ``(seed, epoch)``. Together they make a resumed run repeat an uninterrupted
one exactly. `build_train_loader` wires both in; these classes are its parts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from uit_reid.data.samplers import IdentitySampler, RandomBatchSampler

__all__ = ["EpochBatchSampler", "SeededItems", "mix_seed"]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix-style), so per-sample seeds do not collide."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class SeededItems(Dataset):
    """Index a dataset with ``(epoch, index)`` keys, each item drawn under its own seeded RNG stream.

    The global torch and Python RNGs are left as they were, so loading data never shifts the model's
    own random draws (TIR masking).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        sample_seed = mix_seed(self.seed, epoch, index)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)


class EpochBatchSampler:
    """One epoch of a batch sampler's plan, from a given batch on, as ``(epoch, index)`` keys for `SeededItems`.

    Args:
        sampler: the identity or random batch sampler that plans each epoch.
        batch_multiple: the epoch is cut to a multiple of this many batches (gradient accumulation
            then never mixes epochs).
    """

    def __init__(self, sampler: IdentitySampler | RandomBatchSampler, batch_multiple: int = 1) -> None:
        self.sampler = sampler
        self.batches_per_epoch = len(sampler) // batch_multiple * batch_multiple
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"an epoch has {len(sampler)} batches of {sampler.batch_size}; fewer than "
                f"the {batch_multiple} accumulated per optimiser step"
            )
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Plan epoch ``epoch`` and skip its first ``start`` batches (those a resumed run already saw)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        self.sampler.set_epoch(self.epoch)
        for batch in list(self.sampler)[self.start : self.batches_per_epoch]:
            yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start, 0)
