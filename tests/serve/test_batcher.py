"""`MicroBatcher` on a real event loop with a real batch function (its worker thread included)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uit_reid.serve.batcher import MicroBatcher

GUARD = 30.0  # seconds: only a guard against a hang, never a timing assertion


class Doubler:
    """Batch function: 2x+1 per item; records every batch it was called with (the worker thread appends)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.called = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.called.set()
        if self.gate is not None:
            assert self.gate.wait(GUARD)
        self.batches.append(list(items))
        if any(x < 0 for x in items):
            raise ValueError(f"negative item in batch {items}")
        return [2 * x + 1 for x in items]


def requests_of(sizes: list[int]) -> list[list[int]]:
    """Requests with distinct items, numbered in order, so every item says where it came from."""
    out, n = [], 0
    for size in sizes:
        out.append(list(range(n, n + size)))
        n += size
    return out


async def submit_all(batcher: MicroBatcher, requests: list[list[int]]) -> list:
    try:
        return await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True), GUARD)
    finally:
        await batcher.stop()


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=20), max_batch=st.integers(1, 8),
       max_wait=st.sampled_from([0.0, 0.005]))
def test_concurrent_requests_get_their_own_results_in_order(sizes, max_batch, max_wait) -> None:
    requests = requests_of(sizes)
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch=max_batch, max_wait=max_wait)
    results = asyncio.run(submit_all(batcher, requests))
    assert results == [[2 * x + 1 for x in r] for r in requests]
    # first come, first served: the batches are the requests, in order, cut at request boundaries
    assert [x for b in fn.batches for x in b] == [x for r in requests for x in r]
    starts = {r[0] for r in requests}
    assert all(b[0] in starts for b in fn.batches)
    # no call over max_batch, unless it is one request that is larger on its own
    for b in fn.batches:
        assert len(b) <= max_batch or b in requests, (b, max_batch)
    assert batcher.batches == len(fn.batches) and batcher.items == sum(sizes)


def test_requests_share_a_batch_up_to_max_batch() -> None:
    fn = Doubler()
    results = asyncio.run(submit_all(MicroBatcher(fn, max_batch=4, max_wait=GUARD), requests_of([1, 1, 1, 1, 3, 2, 6])))
    assert results[-1] == [2 * x + 1 for x in range(9, 15)]
    # a full batch goes at once (max_wait is 30 s); 3 + 2 would be 5 > 4, so the 2 opens the next batch
    assert fn.batches == [[0, 1, 2, 3], [4, 5, 6], [7, 8], [9, 10, 11, 12, 13, 14]]


def test_a_lone_request_is_answered() -> None:
    """Alone after a batch of one it goes at once; alone after a larger batch it waits max_wait at most."""
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch=64, max_wait=0.01)

    async def scenario() -> list[list[int]]:
        try:
            out = [await asyncio.wait_for(batcher.submit(r), GUARD) for r in ([5], [6], [7, 8], [9])]
            return [*out, await batcher.submit([])]
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == [[11], [13], [15, 17], [19], []]
    assert fn.batches == [[5], [6], [7, 8], [9]] and batcher.mean_batch == 1.25


def test_the_wait_is_paid_only_while_requests_come_together() -> None:
    """max_wait is 30 s here: a lone request after a batch of one must not wait it, and requests that
    trickle in after a full batch must be gathered into one batch rather than go one by one."""
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch=4, max_wait=GUARD)

    async def scenario() -> None:
        try:
            await asyncio.wait_for(batcher.submit([0]), GUARD / 2)  # alone on a quiet batcher: at once
            await asyncio.wait_for(batcher.submit([1]), GUARD / 2)  # alone after a batch of one: at once
            await asyncio.wait_for(asyncio.gather(*(batcher.submit([x]) for x in (2, 3, 4, 5))), GUARD / 2)
            # after a full batch: the first of these waits for company, the others arrive a little later
            first = asyncio.ensure_future(batcher.submit([6]))
            await asyncio.sleep(0.05)
            await asyncio.wait_for(asyncio.gather(first, *(batcher.submit([x]) for x in (7, 8, 9))), GUARD / 2)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert fn.batches == [[0], [1], [2, 3, 4, 5], [6, 7, 8, 9]]


def test_a_failing_batch_fails_exactly_its_requests_and_the_batcher_goes_on() -> None:
    gate = threading.Event()
    fn = Doubler(gate)
    batcher = MicroBatcher(fn, max_batch=3, max_wait=0.0)
    requests = [[0], [1, -1], [2], [3], [4, 5], [-2]]

    async def scenario() -> tuple[list, list[int]]:
        try:
            tasks = [asyncio.ensure_future(batcher.submit(r)) for r in requests]
            await asyncio.sleep(0)
            gate.set()
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), GUARD)
            after = await asyncio.wait_for(batcher.submit([7]), GUARD)
            return results, after
        finally:
            await batcher.stop()

    results, after = asyncio.run(scenario())
    failed = {x for b in fn.batches if any(v < 0 for v in b) for x in b}
    assert len(fn.batches) >= 3
    for request, result in zip(requests, results):
        if set(request) & failed:
            assert isinstance(result, ValueError) and str(result).startswith("negative item in batch")
        else:
            assert result == [2 * x + 1 for x in request]
    assert {0, 2} - failed  # some requests were batched apart from the failing ones and were answered
    assert after == [15]
    assert batcher.batches == len(fn.batches) - sum(any(v < 0 for v in b) for b in fn.batches)


def test_a_batch_function_returning_too_few_results_fails_its_requests() -> None:
    batcher = MicroBatcher(lambda items: items[:-1], max_batch=8, max_wait=0.0)
    (result,) = asyncio.run(submit_all(batcher, [[1, 2]]))
    assert isinstance(result, RuntimeError) and str(result) == "batch function returned 1 results for 2 items"


def test_stop_fails_the_queued_and_running_requests() -> None:
    """No request is left waiting for ever: the batch in the worker and the queued ones all fail."""
    gate = threading.Event()
    fn = Doubler(gate)
    batcher = MicroBatcher(fn, max_batch=2, max_wait=0.0)

    async def scenario() -> list:
        tasks = [asyncio.ensure_future(batcher.submit(r)) for r in ([0, 1], [2], [3, 4])]
        assert await asyncio.to_thread(fn.called.wait, GUARD)  # [0, 1] is in the worker, [2] and [3, 4] queued
        gate.set()  # stop() cancels before the loop can take the worker's answer, then waits for the worker
        await batcher.stop()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), GUARD)

    results = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) and str(r) == "the batcher was stopped" for r in results), results


@pytest.mark.parametrize(("kwargs", "message"), [({"max_batch": 0}, "max_batch must be positive, got 0"),
                                                  ({"max_wait": -1.0}, "max_wait must be >= 0, got -1.0")])
def test_bad_settings_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        MicroBatcher(lambda items: items, **kwargs)
