"""The batcher alone, with fake batch functions."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batching import Batcher, Overloaded, ShuttingDown


class Gate:
    """A batch function that records each batch and can be held closed."""

    def __init__(self, fail_on=None):
        self.batches: list[list] = []
        self.open = threading.Event()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items):
        self.batches.append(list(items))
        self.entered.set()
        assert self.open.wait(10)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [x * 10 for x in items]


@pytest.fixture
def make_batcher():
    made = []

    def make(fn, **kw):
        b = Batcher("test", fn, **kw)
        b.start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def test_queued_requests_are_batched_together_and_answered_in_order(make_batcher):
    gate = Gate()
    b = make_batcher(gate, batch_size=8, queue_size=100, wait_s=0)
    first = b.submit_nowait([1])
    assert gate.entered.wait(5)
    # while the worker is busy, three requests queue up: they must go in one batch
    futures = [b.submit_nowait([2, 3]), b.submit_nowait([4]), b.submit_nowait([5, 6, 7])]
    gate.open.set()
    assert first.result(5) == [10]
    assert [f.result(5) for f in futures] == [[20, 30], [40], [50, 60, 70]]
    assert gate.batches == [[1], [2, 3, 4, 5, 6, 7]]
    assert b.pending == 0


def test_batches_never_pass_batch_size(make_batcher):
    gate = Gate()
    gate.open.set()
    b = make_batcher(gate, batch_size=4, queue_size=100, wait_s=0.05)
    futures = [b.submit_nowait(list(range(i * 3, i * 3 + 3))) for i in range(3)]
    big = b.submit_nowait(list(range(100, 110)))  # alone bigger than a batch: split
    assert [f.result(5) for f in futures][2] == [60, 70, 80]
    assert big.result(5) == [x * 10 for x in range(100, 110)]
    assert max(len(batch) for batch in gate.batches) <= 4


def test_wait_gathers_requests_arriving_shortly_after(make_batcher):
    gate = Gate()
    gate.open.set()
    b = make_batcher(gate, batch_size=8, queue_size=100, wait_s=0.5)
    f1 = b.submit_nowait([1])
    time.sleep(0.05)
    f2 = b.submit_nowait([2])
    assert f1.result(5) == [10] and f2.result(5) == [20]
    assert gate.batches == [[1, 2]]


def test_full_queue_is_overloaded(make_batcher):
    gate = Gate()
    b = make_batcher(gate, batch_size=4, queue_size=3, wait_s=0)
    running = b.submit_nowait([1, 2])
    assert gate.entered.wait(5)
    queued = b.submit_nowait([3])
    assert b.is_overloaded(1)
    with pytest.raises(Overloaded):
        b.submit_nowait([4])
    gate.open.set()
    assert running.result(5) == [10, 20] and queued.result(5) == [30]
    assert b.submit_nowait([4, 5, 6]).result(5) == [40, 50, 60]


def test_a_request_larger_than_the_queue_runs_when_alone(make_batcher):
    gate = Gate()
    gate.open.set()
    b = make_batcher(gate, batch_size=2, queue_size=2, wait_s=0)
    assert b.submit_nowait([1, 2, 3, 4, 5]).result(5) == [10, 20, 30, 40, 50]


def test_one_failing_request_does_not_fail_its_batch_mates(make_batcher):
    gate = Gate(fail_on=13)
    b = make_batcher(gate, batch_size=8, queue_size=100, wait_s=0)
    blocker = b.submit_nowait([1])
    assert gate.entered.wait(5)
    good, bad, good2 = b.submit_nowait([2]), b.submit_nowait([13]), b.submit_nowait([3])
    gate.open.set()
    assert blocker.result(5) == [10]
    assert good.result(5) == [20] and good2.result(5) == [30]
    with pytest.raises(ValueError, match="bad item 13"):
        bad.result(5)


def test_cancelled_request_is_skipped(make_batcher):
    gate = Gate()
    b = make_batcher(gate, batch_size=8, queue_size=100, wait_s=0)
    b.submit_nowait([1])
    assert gate.entered.wait(5)
    cancelled = b.submit_nowait([2])
    kept = b.submit_nowait([3])
    assert cancelled.cancel()
    gate.open.set()
    assert kept.result(5) == [30]
    assert [2] not in gate.batches and all(2 not in batch for batch in gate.batches)
    assert b.pending == 0


def test_stop_fails_what_is_still_queued(make_batcher):
    gate = Gate()
    b = make_batcher(gate, batch_size=1, queue_size=100, wait_s=0)
    running = b.submit_nowait([1])
    assert gate.entered.wait(5)
    queued = b.submit_nowait([2])
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    time.sleep(0.05)
    gate.open.set()
    stopper.join(5)
    assert running.result(5) == [10]  # the running batch finishes
    with pytest.raises(ShuttingDown):
        queued.result(5)
    with pytest.raises(ShuttingDown):
        b.submit_nowait([3])
    assert not b.alive


def test_async_submit_and_metrics_hooks():
    seen, depths = [], []
    b = Batcher("m", lambda items: [x + 1 for x in items], batch_size=4, queue_size=10, wait_s=0,
                on_batch=lambda n, s: seen.append((n, s)), on_depth=depths.append)
    b.start()
    try:
        async def main():
            return await asyncio.gather(b.submit([1, 2]), b.submit([3]), b.submit([]))

        assert asyncio.run(main()) == [[2, 3], [4], []]
    finally:
        b.stop()
    assert sum(n for n, _ in seen) == 3 and all(s >= 0 for _, s in seen)
    assert depths[-1] == 0 and max(depths) >= 1


def test_concurrent_http_requests_share_encoder_calls(app_client, shared_resources, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    encoder = shared_resources.text_encoder
    original = encoder.encode_tokens
    calls: list[int] = []

    def slow(batch):
        calls.append(len(batch.input_ids))
        time.sleep(0.3)  # while the first call runs, the other requests queue up
        return original(batch)

    c = app_client(batch={"batch_size": 32, "wait_ms": 0})
    monkeypatch.setattr(encoder, "encode_tokens", slow)
    texts = [f"query number {i}" for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda t: c.post("/search", json={"text": t, "k": 1}), texts))
    assert all(r.status_code == 200 for r in responses)
    assert sum(calls) == 12 and len(calls) <= 4, calls
    # each answer is its own query's, not a batch mate's
    monkeypatch.undo()
    for text, r in zip(texts, responses, strict=True):
        alone = c.post("/search", json={"text": text, "k": 1}).json()["results"][0]["score"]
        assert abs(r.json()["results"][0]["score"] - alone) < 1e-4
