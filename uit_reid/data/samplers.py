"""Batch samplers: P identities x K instances (for SDM/CMT/ID losses), the authors' identity groups
of random size, and random batches; all DDP-aware.

All are *batch* samplers (pass them as ``DataLoader(batch_sampler=...)``). Every rank builds the same
epoch plan from ``(seed, epoch)`` and takes a disjoint shard of it; all ranks get the same number of
batches (the remainder is dropped), so collective ops never wait on a rank that ran out. Call
``set_epoch(epoch)`` before each epoch to reshuffle.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np

from uit_reid import distributed, recipe

SAMPLERS: tuple[str, ...] = ("identity_groups", "identity", "random")
"""Names accepted by `build_batch_sampler` (and ``data.sampler`` in training configs)."""


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Rank and world size: the given ones, else the initialised process group's, else (0, 1)."""
    if world_size is None:
        world_size = distributed.world_size()
    if rank is None:
        rank = distributed.rank()
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    return rank, world_size


class IdentitySampler:
    """Batches of ``batch_size // num_instances`` distinct identities x ``num_instances`` samples each.

    Each epoch every identity's samples are shuffled and cut into chunks of ``num_instances`` (an
    identity with fewer samples is padded by re-drawing its own samples; a trailing partial chunk is
    dropped when the identity has at least one full chunk). Batches pick P random identities that still
    have chunks, as in IRRA's ``RandomIdentitySampler``. The batch plan is dealt round-robin to ranks.
    When every identity has a multiple of K samples and the number of batches divides evenly, each
    index appears exactly once per epoch across all ranks.
    """

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        num_instances: int = 4,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of num_instances ({num_instances})"
            )
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size = _dist_info(rank, world_size)
        index: dict[int, list[int]] = defaultdict(list)
        for i, pid in enumerate(pids):
            index[int(pid)].append(i)
        self.index = {pid: np.asarray(idx, dtype=np.int64) for pid, idx in sorted(index.items())}
        if len(self.index) < self.num_pids_per_batch:
            raise ValueError(
                f"{len(self.index)} identities cannot fill batches of {self.num_pids_per_batch} identities"
            )
        self._len = len(self._plan(0)) // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (same on every rank)."""
        self.epoch = epoch

    def _plan(self, epoch: int, round_: int = 0) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch, round_])
        k = self.num_instances
        chunks: dict[int, list[np.ndarray]] = {}
        for pid, idx in self.index.items():
            if len(idx) < k:
                idx = np.concatenate([rng.permutation(idx), rng.choice(idx, size=k - len(idx), replace=True)])
            else:
                idx = rng.permutation(idx)
            chunks[pid] = [idx[s : s + k] for s in range(0, len(idx) - k + 1, k)]
        available = [pid for pid in self.index if chunks[pid]]
        batches: list[list[int]] = []
        p = self.num_pids_per_batch
        while len(available) >= p:
            chosen = rng.choice(len(available), size=p, replace=False)
            batch: list[int] = []
            for c in chosen:
                batch.extend(int(i) for i in chunks[available[c]].pop())
            batches.append(batch)
            available = [pid for pid in available if chunks[pid]]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        # The greedy tail makes the plan length vary a little between epochs when identities have
        # unequal sizes; every epoch is cut (or, rarely, topped up from a further shuffle) to the
        # epoch-0 length so that ``len()`` is exact and all ranks agree.
        need = self._len * self.world_size
        plan = self._plan(self.epoch)
        round_ = 1
        while len(plan) < need:
            plan += self._plan(self.epoch, round_)
            round_ += 1
        yield from plan[:need][self.rank :: self.world_size]

    def __len__(self) -> int:
        return self._len


class RandomBatchSampler:
    """Random batches of ``batch_size`` sample indices, sharded disjointly across ranks.

    With ``drop_last=True`` each rank takes every ``world_size``-th index of a shared permutation and
    drops its partial batch; with ``drop_last=False`` the permutation is padded by wrapping around so
    every rank gets the same number of batches (the padded indices repeat).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = True,
    ) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError("num_samples and batch_size must be >= 1")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.drop_last = drop_last
        self.rank, self.world_size = _dist_info(rank, world_size)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (same on every rank)."""
        self.epoch = epoch

    def _per_rank(self) -> int:
        n, w = self.num_samples, self.world_size
        return n // w if self.drop_last else -(-n // w)

    def __iter__(self) -> Iterator[list[int]]:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        per_rank = self._per_rank()
        if not self.drop_last and per_rank * self.world_size > len(perm):
            perm = np.resize(perm, per_rank * self.world_size)  # wraps around
        mine = perm[self.rank :: self.world_size][:per_rank]
        for s in range(0, len(self) * self.batch_size, self.batch_size):
            yield [int(i) for i in mine[s : s + self.batch_size]]

    def __len__(self) -> int:
        per_rank = self._per_rank()
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)


class IdentityGroupSampler(IdentitySampler):
    """The sampler behind the paper's numbers (SEN's ``RandomIdnumSampler``): identity groups of a
    random size.

    Each epoch every identity draws a group size ``k`` uniformly from ``1..num_instances``; its
    shuffled samples are cut into groups of ``k`` (an identity with fewer than ``k`` samples draws
    ``k`` of them with replacement; a trailing partial group is dropped). Then, round after round,
    ``batch_size // num_instances`` distinct identities that still have groups are picked at random
    and one group of each is appended to a flat list, which is cut into batches of ``batch_size``
    (the trailing partial batch is dropped so every rank gets full batches). With
    ``num_instances=2`` about half the samples of a CUHK-PEDES-sized split have a same-identity
    partner in their batch, against about 1% with random batches.
    """

    def _plan(self, epoch: int, round_: int = 0) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch, round_])
        groups: dict[int, list[np.ndarray]] = {}
        for pid, idx in self.index.items():
            k = int(rng.integers(1, self.num_instances + 1))
            idx = rng.choice(idx, size=k, replace=True) if len(idx) < k else rng.permutation(idx)
            groups[pid] = [idx[s : s + k] for s in range(0, len(idx) - k + 1, k)][::-1]
        available = list(self.index)
        flat: list[int] = []
        while len(available) >= self.num_pids_per_batch:
            for c in rng.choice(len(available), size=self.num_pids_per_batch, replace=False):
                flat.extend(int(i) for i in groups[available[c]].pop())
            available = [pid for pid in available if groups[pid]]
        b = self.batch_size
        return [flat[s : s + b] for s in range(0, len(flat) - b + 1, b)]


def build_batch_sampler(
    kind: str,
    pids: Sequence[int],
    batch_size: int,
    num_instances: int = recipe.NUM_INSTANCES,
    *,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
) -> IdentityGroupSampler | IdentitySampler | RandomBatchSampler:
    """The batch sampler named ``kind`` (one of `SAMPLERS`) over samples with identities ``pids``."""
    if kind == "identity_groups":
        return IdentityGroupSampler(pids, batch_size, num_instances, seed=seed, rank=rank, world_size=world_size)
    if kind == "identity":
        return IdentitySampler(pids, batch_size, num_instances, seed=seed, rank=rank, world_size=world_size)
    if kind == "random":
        return RandomBatchSampler(len(pids), batch_size, seed=seed, rank=rank, world_size=world_size)
    raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {kind!r}")
