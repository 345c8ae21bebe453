"""Requests become futures on a bounded queue; one worker thread forms batches and runs the encoder.

After infinity's ``BatchHandler`` and text-embeddings-inference's token budget: callers submit a list of
items and await its results. Each item has a cost (1 for an image; its token count for a text). The worker
takes queued requests in arrival order up to ``batch_cost`` (waiting at most ``wait_s`` for more once one
has arrived), lets ``plan`` cut them into encoder calls (texts: sorted by length, each call's padded size
under the token budget), runs ``fn`` once per call off the event loop, and hands each request its slice.
When the pending items or their cost would pass ``queue_size`` / ``queue_cost`` a submit raises
``Overloaded`` (the API answers 429): a bounded queue keeps latency bounded instead of letting it grow
with the backlog.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(Exception):
    """The queue is full: the caller should retry later."""


class ShuttingDown(Exception):
    """The batcher was stopped before the request ran."""


@dataclass
class _Job(Generic[T, R]):
    items: list[T]
    cost: int
    future: concurrent.futures.Future[list[R]]


_NOT_RUN = object()  # an item of a round whose encoder call did not start because the batcher closed


def _unit_cost(_item: object) -> int:
    return 1


@dataclass(frozen=True)
class QueueLimits:
    """How much a round gathers and how much may wait.

    A round takes queued requests up to ``batch_cost`` (default ``batch_size``), waiting at most ``wait_s``
    for more once one has arrived. A submit is ``Overloaded`` when the pending items would pass
    ``queue_size`` or their cost ``queue_cost`` (None: no bound)."""

    batch_size: int = 32
    queue_size: int = 256
    wait_s: float = 0.002
    batch_cost: int | None = None
    queue_cost: int | None = None


@dataclass(frozen=True)
class BatchHooks:
    """None of them may raise. ``on_batch(items, seconds, cost)`` runs after each ``fn`` call,
    ``on_depth(items, cost)`` whenever the pending items change (both for metrics), and ``on_idle()`` on the
    worker thread once per idle period: when no work has come for ``idle_s`` seconds after an encoder call
    (the service hands free heap memory back to the system there, see service/memory.py)."""

    on_batch: Callable[[int, float, int], None] | None = None
    on_depth: Callable[[int, int], None] | None = None
    on_idle: Callable[[], None] | None = None
    idle_s: float = 1.0


class Batcher(Generic[T, R]):
    """One worker thread in front of a batch function ``fn(items) -> results`` (same length, same order).

    ``cost(item)`` weighs items (default 1 each) against the ``limits``; ``plan(items)`` cuts a round into
    encoder calls, as lists of indices (default: consecutive chunks of ``batch_size``).
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[list[T]], Sequence[R]],
        limits: QueueLimits = QueueLimits(),
        *,
        cost: Callable[[T], int] | None = None,
        plan: Callable[[list[T]], list[Sequence[int]]] | None = None,
        hooks: BatchHooks = BatchHooks(),
    ) -> None:
        if limits.batch_size < 1 or limits.queue_size < 1 or limits.wait_s < 0:
            raise ValueError("batch_size and queue_size must be >= 1 and wait_s >= 0")
        if (limits.batch_cost is not None and limits.batch_cost < 1) or \
                (limits.queue_cost is not None and limits.queue_cost < 1):
            raise ValueError("batch_cost and queue_cost must be >= 1")
        self.name = name
        self.fn = fn
        self.batch_size = limits.batch_size
        self.queue_size = limits.queue_size
        self.wait_s = limits.wait_s
        self.cost = cost or _unit_cost
        self.batch_cost = limits.batch_cost or limits.batch_size
        self.queue_cost = limits.queue_cost
        self.plan = plan or self._chunks
        self._on_batch = hooks.on_batch
        self._on_depth = hooks.on_depth
        self._on_idle = hooks.on_idle
        self._idle_s = hooks.idle_s
        self.clock: Callable[[], float] = time.perf_counter  # what on_batch's seconds are measured with
        self._jobs: deque[_Job[T, R]] = deque()
        self._pending = 0  # items queued or inside the running round
        self._pending_cost = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._call_seconds: deque[float] = deque(maxlen=32)  # the last encoder calls' durations
        self._running: list[_Job[T, R]] = []  # the round the worker is on

    # lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"batcher-{self.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Take no more work and fail what is queued with ``ShuttingDown``; the running batch finishes.
        Does not block (the event loop may call it)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._fail_queued()

    def abandon(self) -> None:
        """``close()``, and fail the requests of the round that is running too: their handlers answer now
        (503) instead of waiting for an encoder call that cannot end in time; the call's results are dropped.
        The shutdown's last resort, just before the server's deadline."""
        self.close()
        with self._cond:
            running = list(self._running)
        for job in running:
            self._resolve(job, exc=ShuttingDown(f"the {self.name} encoder is shutting down"))

    @property
    def busy(self) -> bool:
        """The worker is inside a round."""
        return bool(self._running)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the running batch, fail what is still queued with ``ShuttingDown``, join the worker for at
        most ``timeout`` seconds."""
        self.close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("batcher %s: worker still busy after %.0f s", self.name, timeout)
        # without a worker (never started) nobody else will fail the leftovers
        self._fail_queued()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    @property
    def slowest_call_s(self) -> float:
        """The longest of the last 32 encoder calls, in seconds (0 before any): how long a call that has
        just started may still hold the worker, which the shutdown drain plans for."""
        return max(self._call_seconds, default=0.0)

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def pending_cost(self) -> int:
        return self._pending_cost

    def is_overloaded(self, n: int = 1, cost: int | None = None) -> bool:
        """Would ``n`` more items (of total ``cost``) pass a queue bound? A request alone in the queue is
        always taken, however large, or a request bigger than the queue could never run."""
        if self._pending == 0:
            return False
        if self._pending + n > self.queue_size:
            return True
        return self.queue_cost is not None and self._pending_cost + (n if cost is None else cost) > self.queue_cost

    # submitting --------------------------------------------------------------------------------------
    def submit_nowait(self, items: Sequence[T]) -> concurrent.futures.Future[list[R]]:
        """Queue ``items``; the future resolves to their results. Raises Overloaded or ShuttingDown."""
        items = list(items)
        job: _Job[T, R] = _Job(items, sum(self.cost(x) for x in items), concurrent.futures.Future())
        with self._cond:
            if self._closed:
                raise ShuttingDown(f"the {self.name} encoder is shutting down")
            if self.is_overloaded(len(job.items), job.cost):
                raise Overloaded(f"the {self.name} encoder queue is full ({self._pending} items, "
                                 f"{self._pending_cost} cost pending)")
            self._jobs.append(job)
            self._pending += len(job.items)
            self._pending_cost += job.cost
            depth = (self._pending, self._pending_cost)
            self._cond.notify()
        self._report_depth(*depth)
        return job.future

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Queue ``items`` and wait for their results without blocking the event loop. Cancelling the
        awaiting task cancels the job if it has not started."""
        if not items:
            return []
        return await asyncio.wrap_future(self.submit_nowait(items))

    # the worker --------------------------------------------------------------------------------------
    def _run(self) -> None:
        settled = True  # no encoder call since the last on_idle
        while True:
            if not settled and self._quiet_for(self._idle_s):
                self._notify_idle()
                settled = True
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed:
                    break
                batch = self._gather()
            self._process(batch)
            settled = self._on_idle is None
        self._fail_queued()

    def _quiet_for(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for work; True when none came and the batcher is still open."""
        with self._cond:
            self._cond.wait_for(lambda: self._jobs or self._closed, timeout=seconds)
            return not self._jobs and not self._closed

    def _notify_idle(self) -> None:
        try:
            self._on_idle()  # type: ignore[misc]
        except Exception:  # a hook must not take the worker down
            log.exception("batcher %s: on_idle failed", self.name)

    def _gather(self) -> list[_Job[T, R]]:
        """Called with the lock held and at least one job queued."""
        batch = [self._jobs.popleft()]
        cost = batch[0].cost
        deadline = time.monotonic() + self.wait_s
        while cost < self.batch_cost and not self._closed:
            if self._jobs:
                if cost + self._jobs[0].cost > self.batch_cost:
                    break
                job = self._jobs.popleft()
                batch.append(job)
                cost += job.cost
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        return batch

    def _process(self, batch: list[_Job[T, R]]) -> None:
        done = sum(len(j.items) for j in batch)
        done_cost = sum(j.cost for j in batch)
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        with self._cond:
            self._running = live
        try:
            if not live:
                return
            try:
                results = self._call([x for j in live for x in j.items])
            except Exception as exc:
                if len(live) == 1:
                    self._resolve(live[0], exc=exc)
                    return
                # one bad request must not fail the others batched with it: run each alone
                for job in live:
                    try:
                        self._settle(job, self._call(job.items))
                    except Exception as job_exc:
                        self._resolve(job, exc=job_exc)
                return
            start = 0
            for job in live:
                self._settle(job, results[start : start + len(job.items)])
                start += len(job.items)
        finally:
            with self._cond:
                self._running = []
                self._pending -= done
                self._pending_cost -= done_cost
                depth = (self._pending, self._pending_cost)
            self._report_depth(*depth)

    def _chunks(self, items: list[T]) -> list[Sequence[int]]:
        return [range(s, min(s + self.batch_size, len(items))) for s in range(0, len(items), self.batch_size)]

    def _settle(self, job: _Job[T, R], results: list[R]) -> None:
        """A job's results, or ShuttingDown when the batcher closed before all of its items ran."""
        if any(r is _NOT_RUN for r in results):
            self._resolve(job, exc=ShuttingDown(f"the {self.name} encoder is shutting down"))
        else:
            self._resolve(job, results)

    @staticmethod
    def _resolve(job: _Job[T, R], results: list[R] | None = None, exc: BaseException | None = None) -> None:
        """Set a job's outcome unless it has one already (``abandon`` may have failed it meanwhile)."""
        try:
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(results)  # type: ignore[arg-type]
        except concurrent.futures.InvalidStateError:
            pass

    def _call(self, items: list[T]) -> list[R]:
        """Runs the planned encoder calls of a round. Once the batcher is closed no further call starts: the
        items of those calls stay ``_NOT_RUN`` (their requests get ShuttingDown), so a closed batcher is
        busy for at most the one call already running, not for the rest of a long round."""
        out: list[R | object] = [_NOT_RUN] * len(items)
        for idx in self.plan(items):
            if self._closed:
                break
            chunk = [items[i] for i in idx]
            t0 = self.clock()
            results = list(self.fn(chunk))
            seconds = self.clock() - t0
            self._call_seconds.append(seconds)
            if len(results) != len(chunk):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(chunk)} items")
            if self._on_batch is not None:
                self._on_batch(len(chunk), seconds, sum(self.cost(x) for x in chunk))
            for i, r in zip(idx, results, strict=True):
                out[i] = r
        return out  # type: ignore[return-value]  # _NOT_RUN only for calls skipped after close

    def _fail_queued(self) -> None:
        with self._cond:
            jobs = list(self._jobs)
            self._jobs.clear()
            self._pending -= sum(len(j.items) for j in jobs)
            self._pending_cost -= sum(j.cost for j in jobs)
            depth = (self._pending, self._pending_cost)
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown(f"the {self.name} encoder is shutting down"))
        if jobs:
            self._report_depth(*depth)

    def _report_depth(self, items: int, cost: int) -> None:
        if self._on_depth is not None:
            self._on_depth(items, cost)
