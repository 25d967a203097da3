"""Batch samplers: P x K batches, disjoint equal shards per rank, full coverage, epoch reshuffles."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.data import IdentitySampler, RandomBatchSampler


def _pids(sizes: list[int]) -> list[int]:
    out = [pid for pid, n in enumerate(sizes) for _ in range(n)]
    # interleave so identities are not contiguous in index order
    return out[::2] + out[1::2]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=4, max_size=40),
    p=st.integers(1, 4),
    k=st.integers(1, 4),
    world=st.integers(1, 4),
    epoch=st.integers(0, 5),
)
def test_identity_sampler_properties(sizes: list[int], p: int, k: int, world: int, epoch: int) -> None:
    pids = _pids(sizes)
    if len(set(pids)) < p:
        return
    samplers = [IdentitySampler(pids, p * k, k, seed=3, rank=r, world_size=world) for r in range(world)]
    per_rank = []
    for s in samplers:
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s) == len(samplers[0])
        for b in batches:
            assert len(b) == p * k
            c = Counter(pids[i] for i in b)
            assert len(c) == p and set(c.values()) == {k}
        per_rank.append({i for b in batches for i in b})
    if epoch == 0:  # exact plan, no top-up: shards are disjoint across ranks
        for r in range(world):
            for q in range(r + 1, world):
                assert not per_rank[r] & per_rank[q]


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 4), k=st.integers(1, 4), world=st.integers(1, 3), n=st.integers(1, 4),
       epoch=st.integers(0, 9))
def test_identity_sampler_covers_every_index_once(p: int, k: int, world: int, n: int, epoch: int) -> None:
    pids = _pids([k] * (p * world * n))
    seen: list[int] = []
    for r in range(world):
        s = IdentitySampler(pids, p * k, k, seed=0, rank=r, world_size=world)
        s.set_epoch(epoch)
        seen += [i for b in s for i in b]
    assert sorted(seen) == list(range(len(pids)))


def test_identity_sampler_set_epoch_reshuffles() -> None:
    pids = _pids([4] * 32)
    s = IdentitySampler(pids, 16, 4, seed=0, rank=0, world_size=1)
    e0, e0b = list(s), list(s)
    s.set_epoch(1)
    assert e0 == e0b and list(s) != e0


def test_identity_sampler_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of num_instances"):
        IdentitySampler([0, 1, 2], 6, 4)
    with pytest.raises(ValueError, match="2 identities cannot fill"):
        IdentitySampler([0, 0, 1, 1], 12, 2)
    with pytest.raises(ValueError, match="invalid rank"):
        IdentitySampler([0, 1], 2, 1, rank=2, world_size=2)


@settings(max_examples=80, deadline=None)
@given(num=st.integers(1, 200), bs=st.integers(1, 16), world=st.integers(1, 4), epoch=st.integers(0, 3),
       drop_last=st.booleans())
def test_random_batch_sampler(num: int, bs: int, world: int, epoch: int, drop_last: bool) -> None:
    shards = []
    for r in range(world):
        s = RandomBatchSampler(num, bs, seed=1, rank=r, world_size=world, drop_last=drop_last)
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        if drop_last:
            assert all(len(b) == bs for b in batches)
        shards.append([i for b in batches for i in b])
    assert len({len(x) for x in shards}) == 1  # every rank does the same amount of work
    flat = [i for x in shards for i in x]
    if drop_last:
        assert len(flat) == len(set(flat))  # disjoint
        if num % (world * bs) == 0:
            assert sorted(flat) == list(range(num))
    else:
        assert set(flat) == set(range(num))


def test_random_batch_sampler_epochs_differ() -> None:
    s = RandomBatchSampler(64, 8, seed=0, rank=0, world_size=1)
    a = list(s)
    s.set_epoch(1)
    assert list(s) != a and sorted(i for b in a for i in b) == list(range(64))
