"""Batch samplers: P x K batches, disjoint equal shards per rank, full coverage, epoch reshuffles."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.data import (
    IdentityGroupSampler,
    IdentitySampler,
    RandomBatchSampler,
    build_batch_sampler,
    build_train_loader,
)


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


def _cuhk_sized_pids() -> list[int]:
    # CUHK-PEDES train: 11,003 identities, 34,054 images, 2 captions each (68,108 pairs).
    rng = np.random.default_rng(0)
    images = rng.choice([2, 3, 3, 3, 4], size=11_003)
    return _pids([2 * int(n) for n in images])


def _partner_share(batches: list[list[int]], pids: list[int]) -> float:
    with_partner = total = 0
    for b in batches:
        counts = Counter(pids[i] for i in b)
        with_partner += sum(1 for i in b if counts[pids[i]] > 1)
        total += len(b)
    return with_partner / total


def test_identity_groups_give_half_the_samples_a_partner_on_a_cuhk_sized_split() -> None:
    pids = _cuhk_sized_pids()
    assert 66_000 < len(pids) < 70_000
    groups = IdentityGroupSampler(pids, 128, 2, seed=1)
    batches = list(groups)
    assert len(batches) == len(groups) and all(len(b) == 128 for b in batches)
    # SEN's RandomIdnumSampler: K uniform in {1, 2} per identity and epoch, 64 identities per round
    assert _partner_share(batches, pids) >= 0.40
    assert _partner_share(list(RandomBatchSampler(len(pids), 128, seed=1)), pids) < 0.05
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)  # no sample twice in an epoch when identities have >= 2 samples
    # within an epoch every identity's groups have one size, 1 or 2, about half the identities each
    by_pid: dict[int, list[int]] = {}
    for b in batches:
        for pid, n in Counter(pids[i] for i in b).items():
            by_pid.setdefault(pid, []).append(n)
    single = sum(1 for sizes in by_pid.values() if max(sizes) == 1)
    assert 0.4 < single / len(by_pid) < 0.6


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=8, max_size=40), world=st.integers(1, 3), epoch=st.integers(0, 4))
def test_identity_group_sampler_shards_evenly_across_ranks(sizes: list[int], world: int, epoch: int) -> None:
    pids = _pids(sizes)
    samplers = [IdentityGroupSampler(pids, 8, 2, seed=5, rank=r, world_size=world) for r in range(world)]
    shards = []
    for s in samplers:
        s.set_epoch(epoch)
        shards.append(list(s))
        assert len(shards[-1]) == len(s) == len(samplers[0])
        assert all(len(b) == 8 for b in shards[-1])
    seen = [i for shard in shards for b in shard for i in b]
    assert all(0 <= i < len(pids) for i in seen)
    if world > 1 and shards[0]:
        assert shards[0] != shards[1]


def test_build_batch_sampler_names_the_known_kinds() -> None:
    with pytest.raises(ValueError, match=r"sampler must be one of \['identity_groups', 'identity', 'random'\], got 'pk'"):
        build_batch_sampler("pk", [0, 0, 1, 1], 2)


def test_train_loader_default_sampler_is_the_trainers() -> None:
    import inspect

    from uit_reid.train.config import DataConfig

    params = inspect.signature(build_train_loader).parameters
    assert params["sampler"].default == DataConfig().sampler == "identity_groups"
    assert params["num_instances"].default == DataConfig().num_instances == 2
