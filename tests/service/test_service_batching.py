"""The batcher alone, with fake batch functions."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from service_helpers import wait_until

from llm2clip.encoders.base import plan_batches
from service.batching import Batcher, BatchHooks, Overloaded, QueueLimits, ShuttingDown
from service.encode_fns import TextEmbedding


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

    def make(fn, cost=None, plan=None, **limits):
        b = Batcher("test", fn, QueueLimits(**limits), cost=cost, plan=plan)
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
    assert max(len(batch) for batch in gate.batches) == 4
    assert sorted(x for batch in gate.batches for x in batch) == [*range(9), *range(100, 110)]


def test_wait_gathers_requests_arriving_after_the_first(make_batcher):
    """A round waits up to wait_s for more once one request has arrived: with a minute to wait and room for
    two, the second request joins the first whenever it comes (the round closes as soon as it is full)."""
    gate = Gate()
    gate.open.set()
    b = make_batcher(gate, batch_size=2, queue_size=100, wait_s=60)
    f1 = b.submit_nowait([1])
    f2 = b.submit_nowait([2])
    assert f1.result(5) == [10] and f2.result(5) == [20]
    assert gate.batches == [[1, 2]]


def test_without_wait_a_round_takes_only_what_is_queued(make_batcher):
    gate = Gate()
    b = make_batcher(gate, batch_size=8, queue_size=100, wait_s=0)
    f1 = b.submit_nowait([1])
    assert gate.entered.wait(5)  # the first round has closed on [1] alone
    f2 = b.submit_nowait([2])
    gate.open.set()
    assert f1.result(5) == [10] and f2.result(5) == [20]
    assert gate.batches == [[1], [2]]


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
    wait_until(lambda: not b.alive)  # closed while the first batch still runs
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
    b = Batcher("m", lambda items: [x + 1 for x in items], QueueLimits(batch_size=4, queue_size=10, wait_s=0),
                hooks=BatchHooks(on_batch=lambda n, s, cost: seen.append((n, s, cost)),
                                 on_depth=lambda n, cost: depths.append((n, cost))))
    ticks = iter(range(100))
    b.clock = lambda: float(next(ticks))  # every fn call lasts one tick
    first = b.submit_nowait([1, 2])  # queued before the worker starts: one round, one call
    b.start()
    try:
        assert first.result(5) == [2, 3]

        async def main():
            return await asyncio.gather(b.submit([3]), b.submit([]))

        assert asyncio.run(main()) == [[4], []]
    finally:
        b.stop()
    assert seen == [(2, 1.0, 2), (1, 1.0, 1)]
    assert depths == [(2, 2), (0, 0), (1, 1), (0, 0)]


def send_in_order(client, texts: list[str], batcher) -> list:
    """Posts each text from its own thread, each once the one before is queued (``batcher.pending`` has
    grown), so the queue holds them in this order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(texts)) as pool:
        futures = []
        for text in texts:
            before = batcher.pending
            sent = pool.submit(client.post, "/search", json={"text": text, "k": 1})
            futures.append(sent)
            # a request answered without queueing (an error) is the caller's to check
            wait_until(lambda before=before, sent=sent: batcher.pending > before or sent.done())
        return [f.result(30) for f in futures]


def send_while_held(client, texts: list[str], batcher, calls_made, release: threading.Event) -> list:
    """The first text reaches the encoder alone, which holds it (until ``release``) while the others queue
    up in order; then the encoder is released. ``calls_made()`` counts the encoder calls so far."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(send_in_order, client, texts[:1], batcher)
        wait_until(lambda: calls_made() == 1)
        rest = pool.submit(send_in_order, client, texts[1:], batcher)
        wait_until(lambda: batcher.pending == len(texts))
        release.set()
        return first.result(30) + rest.result(30)


def test_concurrent_http_requests_share_encoder_calls(app_client, shared_resources, monkeypatch):
    encoder = shared_resources.text_encoder
    original = encoder.encode_tokens
    calls: list[int] = []
    release = threading.Event()

    def held(batch):
        calls.append(len(batch.input_ids))
        assert release.wait(30)  # the first call holds the worker while the others queue up
        return original(batch)

    # no query cache: the check below must encode each text again, alone
    c = app_client(batch={"batch_size": 32, "wait_ms": 0}, query_cache_size=0)
    batcher = c.app.state.service.runtime.text_batcher
    monkeypatch.setattr(encoder, "encode_tokens", held)
    texts = [f"query number {i}" for i in range(12)]
    responses = send_while_held(c, texts, batcher, lambda: len(calls), release)
    assert [r.status_code for r in responses] == [200] * 12
    # the first text alone, then the other eleven, queued meanwhile, in one call
    assert calls == [1, 11]
    # each answer is its own query's, not a batch mate's
    monkeypatch.undo()
    for text, r in zip(texts, responses, strict=True):
        alone = c.post("/search", json={"text": text, "k": 1}).json()["results"][0]["score"]
        assert abs(r.json()["results"][0]["score"] - alone) < 1e-4


def test_costed_items_are_gathered_to_the_budget_and_planned_into_calls(make_batcher):
    """Text batching: an item costs its tokens; a round gathers up to batch_cost, ``plan`` cuts it."""
    gate = Gate()
    planned = []

    def plan(items):
        planned.append(list(items))
        # longest first, two per call
        order = sorted(range(len(items)), key=lambda i: -items[i])
        return [order[i : i + 2] for i in range(0, len(order), 2)]

    b = make_batcher(gate, batch_size=8, queue_size=100, wait_s=0, cost=lambda x: x, batch_cost=20, plan=plan)
    first = b.submit_nowait([1])
    assert gate.entered.wait(5)
    jobs = [b.submit_nowait([x]) for x in (3, 9, 5, 4, 30)]
    gate.open.set()
    assert [j.result(5) for j in jobs] == [[30], [90], [50], [40], [300]]
    assert first.result(5) == [10]
    # 3 + 9 + 5 = 17 fits the budget of 20, + 4 would not; the 30 alone is over it and still runs
    assert planned[1:] == [[3, 9, 5], [4], [30]]
    assert gate.batches[1:3] == [[9, 5], [3]]
    assert b.pending == 0 and b.pending_cost == 0


def test_queue_cost_bound_answers_overloaded(make_batcher):
    gate = Gate()
    b = make_batcher(gate, batch_size=8, queue_size=100, wait_s=0, cost=lambda x: x, queue_cost=50)
    running = b.submit_nowait([40])
    assert gate.entered.wait(5)
    assert b.is_overloaded(1, 11) and not b.is_overloaded(1, 10)
    with pytest.raises(Overloaded, match="cost pending"):
        b.submit_nowait([11])
    queued = b.submit_nowait([10])
    gate.open.set()
    assert running.result(5) == [400] and queued.result(5) == [100]
    assert b.submit_nowait([500]).result(5) == [5000]  # alone in the queue, however large


def test_http_text_calls_respect_the_token_budget(app_client, shared_resources, monkeypatch):
    encoder = shared_resources.text_encoder
    original = encoder.encode_tokens
    shapes: list[tuple[int, int]] = []
    release = threading.Event()

    def held(batch):
        shapes.append(batch.input_ids.shape)
        assert release.wait(30)
        return original(batch)

    c = app_client(batch={"batch_size": 32, "wait_ms": 0, "max_batch_tokens": 64}, query_cache_size=0)
    batcher = c.app.state.service.runtime.text_batcher
    monkeypatch.setattr(encoder, "encode_tokens", held)
    texts = [("a red circle " * n).strip() + f" {n}" for n in (1, 2, 3, 8, 12, 1, 2, 20)]
    lengths = [len(ids) for ids in encoder.tokenize_each(texts)[0]]
    responses = send_while_held(c, texts, batcher, lambda: len(shapes), release)
    assert [r.status_code for r in responses] == [200] * len(texts)
    # the same calls as planning the rounds by hand: the first text alone (the worker was idle), then
    # rounds of queued texts in arrival order up to 64 tokens, each cut by length under the same budget
    expected: list[tuple[int, int]] = [(1, lengths[0])]
    rnd: list[int] = []
    for n in [*lengths[1:], None]:
        if rnd and (n is None or sum(rnd) + n > 64):
            expected += [(len(idx), max(rnd[i] for i in idx)) for idx in plan_batches(rnd, 64, 32)]
            rnd = []
        if n is not None:
            rnd.append(n)
    assert shapes == expected
    assert all(rows * length <= 64 or rows == 1 for rows, length in shapes), shapes
    assert len(shapes) < len(texts)  # short ones shared calls


def test_repeated_queries_are_answered_from_the_cache(app_client, shared_resources, monkeypatch):
    encoder = shared_resources.text_encoder
    original = encoder.encode_tokens
    calls = []
    c = app_client()  # its warm-up encodes once: count after it
    monkeypatch.setattr(encoder, "encode_tokens", lambda batch: calls.append(1) or original(batch))
    first = c.post("/search", json={"text": "a  green triangle on white", "k": 3}).json()
    # the same text up to whitespace: one cache entry
    second = c.post("/search", json={"text": "a green triangle   on white ", "k": 3}).json()
    assert len(calls) == 1
    assert [r["id"] for r in first["results"]] == [r["id"] for r in second["results"]]
    assert first["results"][0]["score"] == second["results"][0]["score"]
    embedded = c.post("/embed", json={"texts": ["a green triangle on white", "a blue square"]}).json()
    assert len(calls) == 2  # only the new text went to the encoder
    assert len(embedded["text_embeddings"]) == 2
    metrics = c.get("/metrics").text
    assert 'llm2clip_query_cache_lookups_total{result="hit"} 2.0' in metrics
    assert 'llm2clip_query_cache_lookups_total{result="miss"} 2.0' in metrics
    assert "llm2clip_query_cache_entries 2.0" in metrics
    assert 'llm2clip_model_info{backend="onnxruntime",device="cpu"' in metrics
    assert "llm2clip_encoded_tokens_total" in metrics


def test_cache_off_sends_every_query_to_the_encoder(app_client, shared_resources, monkeypatch):
    encoder = shared_resources.text_encoder
    original = encoder.encode_tokens
    calls = []
    c = app_client(query_cache_size=0)
    monkeypatch.setattr(encoder, "encode_tokens", lambda batch: calls.append(1) or original(batch))
    for _ in range(2):
        assert c.post("/search", json={"text": "a green triangle", "k": 1}).status_code == 200
    assert len(calls) == 2


def _emb(value: float, dim: int = 4, tokens: int = 3, truncated: bool = False) -> TextEmbedding:
    return TextEmbedding(np.full(dim, value, np.float32), tokens, truncated)


def test_text_cache_evicts_the_least_recently_used():
    from service.cache import TextEmbeddingCache

    looked = []
    cache = TextEmbeddingCache(2, 10**6, on_lookup=looked.append)
    key = lambda text: (text, "model", "fp32")  # noqa: E731
    cache.put(key("a"), _emb(1.0))
    cache.put(key("b"), _emb(2.0, tokens=7, truncated=True))
    assert cache.get(key("a")).vector.tolist() == [1.0] * 4  # a is now the most recent
    cache.put(key("c"), _emb(3.0))
    assert cache.get(key("b")) is None and cache.get(key("a")) is not None
    got = cache.get(key("c"))
    assert got.vector.tolist() == [3.0] * 4 and (got.tokens, got.truncated) == (3, False)
    assert looked == [True, False, True, True] and len(cache) == 2
    # another model or precision is another entry: a reload never answers from a stale one
    assert cache.get(("a", "other model", "fp32")) is None and cache.get(("a", "model", "int8")) is None
    got.vector[:] = 0  # an answer is a copy: changing it leaves the cache as it was
    assert cache.get(key("c")).vector.tolist() == [3.0] * 4
    off = TextEmbeddingCache(0, 10**6)
    off.put(key("a"), _emb(1.0))
    assert off.get(key("a")) is None and len(off) == 0 and off.nbytes == 0


def test_text_cache_stays_under_its_byte_bound_and_reuses_rows():
    from service.cache import ENTRY_OVERHEAD, TextEmbeddingCache

    row = 64 * 4 + 5 + ENTRY_OVERHEAD
    cache = TextEmbeddingCache(1000, 3 * row + row // 2)  # room for 3 entries of 64 floats
    for i in range(10):
        cache.put((f"text {i}", "m", "fp32"), _emb(float(i), dim=64))
        assert cache.nbytes <= 3 * row + row // 2
    assert len(cache) == 3 and cache.nbytes == 3 * row
    assert [cache.get((f"text {i}", "m", "fp32")) is not None for i in (6, 7, 8, 9)] == [False, True, True, True]
    cache.put(("text 9", "m", "fp32"), _emb(99.0, dim=64))  # replaced in place: no new row
    assert len(cache) == 3 and cache.get(("text 9", "m", "fp32")).vector[0] == 99.0
    cache.put(("wider", "m2", "fp32"), _emb(1.0, dim=128))  # another model's width: the slab starts over
    assert len(cache) == 1 and cache.get(("text 9", "m", "fp32")) is None
    tiny = TextEmbeddingCache(1000, row // 2)  # not even one entry fits: nothing is kept, nothing breaks
    tiny.put(("a", "m", "fp32"), _emb(1.0, dim=64))
    assert tiny.get(("a", "m", "fp32")) is None and tiny.nbytes == 0


def test_query_cache_bytes_setting_bounds_the_service_cache(app_client):
    c = app_client(query_cache_bytes=3 * 1024)
    for i in range(20):
        assert c.post("/search", json={"text": f"a green triangle number {i}", "k": 1}).status_code == 200
    cache = c.app.state.service.runtime.text_cache
    entries, held = len(cache), cache.nbytes
    assert 0 < entries < 20 and held <= 3 * 1024
    assert held + held // entries > 3 * 1024  # full: one more entry would not fit
    assert f"llm2clip_query_cache_bytes {float(held)}" in c.get("/metrics").text
    assert f"llm2clip_query_cache_entries {float(entries)}" in c.get("/metrics").text
