"""Graceful, bounded shutdown: the batchers' close, the Drain's deadline, 503 `shutting_down`, and SIGTERM
sent to a real `llm2clip serve` in the middle of a load."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from service_helpers import assert_error, server_output, start_server

from service.batching import Batcher, QueueLimits, ShuttingDown
from service.shutdown import Drain

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import load as bench_load  # noqa: E402


class Gate:
    """A batch function held closed until ``open`` is set (at most 60 s)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()

    def __call__(self, items):
        self.entered.set()
        self.open.wait(60)
        return [x * 10 for x in items]


def wait_until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def gated_batcher() -> tuple[Batcher, Gate]:
    gate = Gate()
    b = Batcher("test", gate, QueueLimits(batch_size=1, queue_size=100, wait_s=0))
    b.start()
    return b, gate


def test_close_fails_the_queue_at_once_and_lets_the_running_batch_finish():
    b, gate = gated_batcher()
    running = b.submit_nowait([1])
    assert gate.entered.wait(5)
    queued = b.submit_nowait([2])
    b.close()  # returns while the running batch is still held
    assert not running.done()
    assert isinstance(queued.exception(timeout=1), ShuttingDown)
    with pytest.raises(ShuttingDown):
        b.submit_nowait([3])
    gate.open.set()
    assert running.result(5) == [10]
    b.stop()
    assert b.pending == 0


def test_drain_closes_the_batchers_before_its_deadline_and_stops_within_it():
    """SIGTERM's Drain: queued work fails before the deadline; the request inside an encoder call that does
    not end in time gets ShuttingDown `margin` seconds before the deadline (its handler answers 503); the final
    stop does not wait for that call past what is left of the timeout."""
    b, gate = gated_batcher()
    drain = Drain(timeout_s=1.0)

    async def scenario() -> tuple[BaseException | None, float]:
        drain.attach(asyncio.get_running_loop(), [b])
        running = asyncio.wrap_future(b.submit_nowait([1]))
        await asyncio.to_thread(gate.entered.wait, 5)
        queued = asyncio.wrap_future(b.submit_nowait([2]))
        drain.begin()
        assert drain.draining and b.alive
        with pytest.raises(ShuttingDown):
            await asyncio.wait_for(queued, 5)  # failed at the deadline minus the margin
        abandoned = await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), 5)
        assert drain.left() > 0  # answered before the deadline
        t0 = time.monotonic()
        await drain.stop_batchers()  # the running call is stuck: joined for what is left, then given up
        return abandoned[0], time.monotonic() - t0

    try:
        running_outcome, stop_seconds = asyncio.run(scenario())
    finally:
        gate.open.set()
    assert isinstance(running_outcome, ShuttingDown)
    assert stop_seconds < 5  # the gate would hold it 60 s


class CallGate:
    """A batch function whose every call waits for its own go-ahead (at most 60 s)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.started = threading.Semaphore(0)
        self.go = threading.Semaphore(0)

    def __call__(self, items):
        self.calls.append(list(items))
        self.started.release()
        assert self.go.acquire(timeout=60)
        return [x * 10 for x in items]


def test_a_closed_batcher_starts_no_further_call_of_its_round():
    """A round planned into several encoder calls: closing it lets the running call finish, starts none of
    the others, answers the requests served by that call and fails the rest with ShuttingDown."""
    gate = CallGate()
    b = Batcher("test", gate, QueueLimits(batch_size=6, queue_size=100, wait_s=0.5),
                plan=lambda items: [range(i, min(i + 2, len(items))) for i in range(0, len(items), 2)])
    b.start()
    try:
        first, second, third = (b.submit_nowait(items) for items in ([1, 2], [3], [4, 5, 6]))
        assert gate.started.acquire(timeout=5)  # one round of 6 items: calls [1, 2], [3, 4], [5, 6]
        b.close()
        gate.go.release()
        assert first.result(5) == [10, 20]
        for job in (second, third):
            assert isinstance(job.exception(5), ShuttingDown)
        assert gate.calls == [[1, 2]]
        assert b.slowest_call_s > 0
    finally:
        for _ in range(3):
            gate.go.release()
        b.stop()
    assert b.pending == 0 and b.pending_cost == 0


def test_abandon_answers_the_running_round_and_drops_its_late_results(monkeypatch):
    errors = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    b, gate = gated_batcher()
    running = b.submit_nowait([1])
    assert gate.entered.wait(5) and b.busy
    queued = b.submit_nowait([2])
    b.abandon()
    assert isinstance(running.exception(1), ShuttingDown)  # answered while the call still runs
    assert isinstance(queued.exception(1), ShuttingDown)
    gate.open.set()  # the call ends: its results have nowhere to go, and that is no error
    b.stop(5)
    assert not b.busy and b.pending == 0 and errors == []


def test_the_drain_closes_earlier_by_the_slowest_encoder_call():
    class Slow:
        slowest_call_s = 4.0

    drain = Drain(timeout_s=20.0)
    drain._batchers = [Slow(), Slow()]
    assert drain.lead_s() == pytest.approx(drain.margin_s + 4.0)
    drain._batchers = []
    assert drain.lead_s() == drain.margin_s


def test_readyz_and_new_work_answer_503_shutting_down_while_draining(app_client):
    c = app_client(shutdown_timeout_s=6.0)
    state = c.app.state.service
    state.drain.begin()
    assert_error(c.get("/readyz"), 503, "shutting_down")
    assert c.get("/healthz").status_code == 200
    # accepted work is still done until the batchers close, 1.5 s before the deadline
    r = c.post("/search", json={"text": "a red circle drawn while draining", "k": 3})
    assert r.status_code == 200, r.text
    wait_until(lambda: state.runtime is not None and not state.runtime.alive)
    assert_error(c.post("/search", json={"text": "a blue square after the close", "k": 3}), 503, "shutting_down")
    assert_error(c.post("/embed", json={"texts": ["too late"]}), 503, "shutting_down")
    assert c.get("/healthz").status_code == 200


def test_the_servers_signal_starts_the_drain_and_sigterm_is_a_normal_stop():
    """`llm2clip serve`'s wiring: uvicorn's signal handler tells the Drain; SIGTERM re-raised by uvicorn after
    its graceful shutdown ends `serve` normally (exit 0) instead of killing the process."""
    import os

    import uvicorn

    from service import cli

    drain = Drain(timeout_s=5)
    server = cli._server(uvicorn, uvicorn.Config(app=None), drain)
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit and drain.draining
    before = signal.getsignal(signal.SIGTERM)
    with cli._terminate_quietly():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises here, and the context swallows it
        raise AssertionError("SIGTERM did not interrupt")
    assert signal.getsignal(signal.SIGTERM) is before


SHUTDOWN_TIMEOUT_S = 3.0
SIGNAL_AFTER_S = 3.0


@pytest.mark.slow
def test_sigterm_during_load_answers_every_accepted_request_and_exits_0(tiny_bundle, indexes, corpus):
    """What a client can observe: each request got a response (200, 429 `overloaded` or 503 `shutting_down`)
    or never reached the app: a refused connection (the listener had closed), or a connection the server
    closed without an answer after the signal (the request not yet read, or sent as the server closed an
    idle keep-alive connection). The server's own log says whether it cancelled an accepted request at its
    deadline: it must not have."""
    proc, base = start_server(["--model", str(tiny_bundle), "--image-index", str(indexes[0]), "--text-index",
                               str(indexes[1]), "--threads", "1", "--log-level", "info"],
                              env={"LLM2CLIP_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S)})
    events: dict[str, float] = {}
    probes: list[str] = []

    async def probe_readyz() -> None:
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.get(base + "/readyz")
                probes.append(f"{r.status_code} {r.json()['error']['code'] if r.status_code != 200 else ''}")
        except httpx.TransportError as exc:
            probes.append(type(exc).__name__)

    def on_start(t0: float) -> None:
        loop = asyncio.get_running_loop()

        def terminate() -> None:
            events["signal"] = time.perf_counter() - t0
            events["signal_abs"] = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            loop.call_later(0.2, lambda: loop.create_task(probe_readyz()))

        loop.call_later(SIGNAL_AFTER_S, terminate)

    def watch_exit() -> None:
        proc.wait()
        events["exit_abs"] = time.monotonic()

    watcher = threading.Thread(target=watch_exit, daemon=True)
    watcher.start()
    cfg = bench_load.LoadConfig(base, requests=1500, concurrency=32, timeout_s=30)
    try:
        outcomes = asyncio.run(bench_load.run_load(cfg, bench_load.corpus_payloads(corpus / "items.jsonl"),
                                                   on_start=on_start))
        watcher.join(SHUTDOWN_TIMEOUT_S + 10)
        exited_after = events["exit_abs"] - events["signal_abs"]
    finally:
        if proc.poll() is None:
            proc.kill()
        output = server_output(proc)
    assert proc.returncode == 0, output
    assert exited_after < SHUTDOWN_TIMEOUT_S + 5, exited_after
    assert "timeout graceful shutdown exceeded" not in output and "Traceback" not in output, output
    signalled = events["signal"]
    print(bench_load.summarize(outcomes, 1.0)["statuses"], f"exit {exited_after:.2f} s after SIGTERM")  # noqa: T201
    answered = [o for o in outcomes if o.error is None]
    unanswered = [o for o in outcomes if o.error is not None]
    allowed = {(200, None), (429, "overloaded"), (503, "shutting_down")}
    assert {(o.status, o.code) for o in answered} <= allowed, {(o.status, o.code) for o in answered}
    assert sum(o.status == 200 for o in answered) > 50  # the load ran before the signal
    assert {o.error for o in unanswered} <= {"ConnectError", "RemoteProtocolError", "ReadError"}, unanswered[:3]
    # a refused connection never reached the server; a connection closed without an answer can only be the
    # shutdown's doing (the request's bytes not yet read by the server, or sent as it closed an idle
    # keep-alive connection): it ended after the signal. An accepted request dropped unanswered would be one
    # of the tasks uvicorn cancels at its deadline, which its log would say (asserted above).
    early = [o for o in unanswered if o.start + o.seconds < signalled]
    assert not early, early[:3]
    assert any(o.error == "ConnectError" for o in unanswered)  # the listener closed
    # nothing in flight at the signal, nor sent after it, waited past the deadline
    late = [o for o in outcomes if o.start + o.seconds > max(o.start, signalled) + SHUTDOWN_TIMEOUT_S + 1]
    assert not late, late[:3]
    assert probes and probes[0] in ("ConnectError", "503 shutting_down"), probes


def test_the_shutdown_script_classifies_what_requests_got():
    import shutdown as bench_shutdown

    outcomes = [
        bench_load.Outcome("text", 0.0, 1.0, status=200),
        bench_load.Outcome("text", 4.0, 1.5, status=503, code="shutting_down"),
        bench_load.Outcome("image", 5.5, 0.01, error="ConnectError"),
        bench_load.Outcome("embed", 4.8, 0.5, error="ReadError"),  # closed unanswered after the signal: fine
        bench_load.Outcome("embed", 1.0, 0.5, error="ReadError"),  # closed unanswered before it: broken
        bench_load.Outcome("text", 4.0, 2.0, status=500, code="internal"),  # broken
        bench_load.Outcome("text", 4.5, 9.0, status=200),  # waited past the grace period: broken
    ]
    report = bench_shutdown.classify(outcomes, signalled=5.0, grace=3.0)
    assert report["broken"] == 3
    assert {(e["start"], e["error"] or e["status"]) for e in report["broken_examples"]} == {
        (1.0, "ReadError"), (4.0, 500), (4.5, 200)}
    assert report["outcomes"]["200 (before the signal)"] == 1
    assert report["outcomes"]["503 shutting_down (after the signal)"] == 1


@pytest.mark.slow
def test_the_shutdown_script_passes_on_a_real_server(tiny_bundle, indexes, corpus):
    import shutdown as bench_shutdown

    cfg = bench_load.LoadConfig("", requests=1500, concurrency=32)
    report = bench_shutdown.run(["--model", str(tiny_bundle), "--image-index", str(indexes[0]), "--text-index",
                                 str(indexes[1]), "--threads", "1"], cfg,
                                bench_load.corpus_payloads(corpus / "items.jsonl"),
                                bench_shutdown.Plan(signal_after=2.0, grace=3.0))
    assert report["passed"], report
    assert report["exit_status"] == 0 and not report["cancelled_at_deadline"]
    assert report["outcomes"].get("200 (before the signal)", 0) > 10
    assert report["outcomes"].get("ConnectError (after the signal)", 0) > 0
