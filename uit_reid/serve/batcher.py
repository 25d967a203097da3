"""Micro-batching: concurrent requests share one call of a batch function.

Each request hands its items to `MicroBatcher.submit` and awaits the answer. A background task
waits for the first request, then gathers more for at most ``max_wait`` seconds (or until
``max_batch`` items are queued), and runs the batch function once, in a worker thread so the event
loop keeps accepting requests meanwhile. Under load the queue fills while the worker is busy, so
batches grow with concurrency. The wait applies only while requests arrive together (the previous
batch held more than one item, or more are already queued): a lone request after a batch of one
runs at once, so a single client pays no batching delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

__all__ = ["MicroBatcher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Run ``fn(items) -> results`` (one result per item, same order) over batched requests.

    Args:
        fn: the batch function; called in one worker thread, never concurrently with itself.
        max_batch: most items per call (a larger single request still goes through as one call).
        max_wait: seconds to wait for more requests once the first has arrived (while requests come together).
        quiet: exception types ``fn`` raises knowingly (it logs them itself): handed to the waiting
            requests without a traceback in the log.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], *, max_batch: int = 64, max_wait: float = 0.002,
                 quiet: tuple[type[Exception], ...] = ()) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self.quiet = quiet
        self.batches = 0
        self.items = 0
        self._queue: asyncio.Queue[tuple[list[T], asyncio.Future[list[R]]]] | None = None
        self._held: list[tuple[list[T], asyncio.Future[list[R]]]] = []  # taken off the queue, not answered yet
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the background task on the running loop (idempotent)."""
        if self._task is None:
            self._queue = asyncio.Queue()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uit-reid-batch")
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the background task and fail the requests still queued or in a batch not yet answered."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        leftover, self._held = self._held, []
        if self._queue is not None:
            while not self._queue.empty():
                leftover.append(self._queue.get_nowait())
        for _, fut in leftover:
            if not fut.done():
                fut.set_exception(RuntimeError("the batcher was stopped"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, items: list[T]) -> list[R]:
        """Queue ``items`` for the next batch and return their results."""
        if not items:
            return []
        await self.start()
        assert self._queue is not None
        fut: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        await self._queue.put((list(items), fut))
        return await fut

    @property
    def mean_batch(self) -> float:
        """Mean items per call so far (0 before the first call)."""
        return self.items / self.batches if self.batches else 0.0

    async def _run(self) -> None:
        assert self._queue is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        last_size = 0
        while True:
            if not self._held:  # else the request that did not fit the last batch opens this one
                self._held.append(await queue.get())
            count, size = 1, len(self._held[0][0])
            # Waiting pays only while requests arrive together: a lone request after a batch of one
            # (a single client, a quiet service) goes at once instead of paying max_wait.
            together = last_size > 1 or not queue.empty()
            deadline = loop.time() + (self.max_wait if together else 0.0)
            while size < self.max_batch:
                if queue.empty():
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                else:
                    nxt = queue.get_nowait()
                self._held.append(nxt)
                if size + len(nxt[0]) > self.max_batch:  # it waits for the next batch: no call over max_batch
                    break
                count += 1
                size += len(nxt[0])
            last_size = size
            await self._execute(loop, self._held[:count])
            del self._held[:count]

    async def _execute(self, loop: asyncio.AbstractEventLoop, pending: list[tuple[list[T], Any]]) -> None:
        flat = [item for items, _ in pending for item in items]
        try:
            results = await loop.run_in_executor(self._executor, self.fn, flat)
            if len(results) != len(flat):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(flat)} items")
        except Exception as err:  # every waiting request gets the failure, the loop goes on
            if not isinstance(err, self.quiet):
                logger.exception("batch of %d items failed", len(flat))
            for _, fut in pending:
                if not fut.done():
                    fut.set_exception(err)
            return
        self.batches += 1
        self.items += len(flat)
        start = 0
        for items, fut in pending:
            if not fut.done():  # a client that went away leaves a cancelled future
                fut.set_result(list(results[start : start + len(items)]))
            start += len(items)
