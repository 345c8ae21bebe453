"""Requests become futures on a bounded queue; one worker thread forms batches and runs the encoder.

After infinity's ``BatchHandler``: callers submit a list of items and await its results; the worker
takes queued requests up to ``batch_size`` items (waiting at most ``wait_s`` for more once one has
arrived), runs ``fn`` once per batch off the event loop, and hands each request its slice. When the
number of pending items would pass ``queue_size`` a submit raises ``Overloaded`` (the API answers 429):
a bounded queue keeps latency bounded instead of letting it grow with the backlog.
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

import numpy as np

from llm2clip.encoders import ImageEncoder, TextEncoder

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
    future: concurrent.futures.Future[list[R]]


class Batcher(Generic[T, R]):
    """One worker thread in front of a batch function ``fn(items) -> results`` (same length, same order).

    ``on_batch(size, seconds)`` is called after each ``fn`` call and ``on_depth(pending)`` whenever the
    number of pending items changes; both are for metrics and must not raise.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        batch_size: int = 32,
        queue_size: int = 256,
        wait_s: float = 0.002,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        if batch_size < 1 or queue_size < 1 or wait_s < 0:
            raise ValueError("batch_size and queue_size must be >= 1 and wait_s >= 0")
        self.name = name
        self.fn = fn
        self.batch_size = batch_size
        self.queue_size = queue_size
        self.wait_s = wait_s
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._jobs: deque[_Job[T, R]] = deque()
        self._pending = 0  # items queued or inside the running batch
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"batcher-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the running batch, fail what is still queued with ``ShuttingDown``, join the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
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
    def pending(self) -> int:
        return self._pending

    def is_overloaded(self, n: int = 1) -> bool:
        """Would ``n`` more items pass the queue bound? A request alone in the queue is always taken,
        however large, or a request bigger than the queue could never run."""
        return self._pending > 0 and self._pending + n > self.queue_size

    # submitting --------------------------------------------------------------------------------------
    def submit_nowait(self, items: Sequence[T]) -> concurrent.futures.Future[list[R]]:
        """Queue ``items``; the future resolves to their results. Raises Overloaded or ShuttingDown."""
        job: _Job[T, R] = _Job(list(items), concurrent.futures.Future())
        with self._cond:
            if self._closed:
                raise ShuttingDown(f"the {self.name} encoder is shutting down")
            if self.is_overloaded(len(job.items)):
                raise Overloaded(f"the {self.name} encoder queue is full ({self._pending} items pending)")
            self._jobs.append(job)
            self._pending += len(job.items)
            depth = self._pending
            self._cond.notify()
        self._report_depth(depth)
        return job.future

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Queue ``items`` and wait for their results without blocking the event loop. Cancelling the
        awaiting task cancels the job if it has not started."""
        if not items:
            return []
        return await asyncio.wrap_future(self.submit_nowait(items))

    # the worker --------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed:
                    break
                batch = self._gather()
            self._process(batch)
        self._fail_queued()

    def _gather(self) -> list[_Job[T, R]]:
        """Called with the lock held and at least one job queued."""
        batch = [self._jobs.popleft()]
        count = len(batch[0].items)
        deadline = time.monotonic() + self.wait_s
        while count < self.batch_size and not self._closed:
            if self._jobs:
                if count + len(self._jobs[0].items) > self.batch_size:
                    break
                job = self._jobs.popleft()
                batch.append(job)
                count += len(job.items)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        return batch

    def _process(self, batch: list[_Job[T, R]]) -> None:
        done = sum(len(j.items) for j in batch)
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        try:
            if not live:
                return
            try:
                results = self._call([x for j in live for x in j.items])
            except Exception as exc:
                if len(live) == 1:
                    live[0].future.set_exception(exc)
                    return
                # one bad request must not fail the others batched with it: run each alone
                for job in live:
                    try:
                        job.future.set_result(self._call(job.items))
                    except Exception as job_exc:
                        job.future.set_exception(job_exc)
                return
            start = 0
            for job in live:
                job.future.set_result(results[start : start + len(job.items)])
                start += len(job.items)
        finally:
            with self._cond:
                self._pending -= done
                depth = self._pending
            self._report_depth(depth)

    def _call(self, items: list[T]) -> list[R]:
        out: list[R] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            t0 = time.perf_counter()
            results = list(self.fn(chunk))
            if len(results) != len(chunk):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(chunk)} items")
            if self._on_batch is not None:
                self._on_batch(len(chunk), time.perf_counter() - t0)
            out.extend(results)
        return out

    def _fail_queued(self) -> None:
        with self._cond:
            jobs = list(self._jobs)
            self._jobs.clear()
            self._pending -= sum(len(j.items) for j in jobs)
            depth = self._pending
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown(f"the {self.name} encoder is shutting down"))
        if jobs:
            self._report_depth(depth)

    def _report_depth(self, depth: int) -> None:
        if self._on_depth is not None:
            self._on_depth(depth)


# batch functions for the two encoders ------------------------------------------------------------------
@dataclass
class TextEmbedding:
    vector: np.ndarray  # unit float32 (dim,)
    tokens: int  # tokens the encoder saw (after truncation)
    truncated: bool  # the text had more than max_tokens tokens


def text_batch_fn(encoder: TextEncoder) -> Callable[[list[str]], list[TextEmbedding]]:
    def encode(texts: list[str]) -> list[TextEmbedding]:
        batch = encoder.tokenize(texts)
        vectors = encoder.encode_tokens(batch)
        tokens = batch.attention_mask.sum(axis=1)
        return [TextEmbedding(vectors[i], int(tokens[i]), bool(batch.truncated[i]))
                for i in range(len(texts))]

    return encode


def image_batch_fn(encoder: ImageEncoder) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Items are preprocessed pixels (3, S, S): decoding and resizing run in the request's own thread, in
    parallel, so the single worker spends its time in the encoder."""

    def encode(pixels: list[np.ndarray]) -> list[np.ndarray]:
        return list(encoder.encode_pixels(np.stack(pixels)))

    return encode
