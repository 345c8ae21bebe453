"""Handing free heap memory back when the encoders go idle: the batchers' idle hook and the heap trimmer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from service_helpers import wait_until

from service.batching import Batcher, BatchHooks, QueueLimits
from service.memory import can_trim


class Held:
    """A batch function held closed until ``release``."""

    def __init__(self):
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, items):
        self.calls += 1
        self.entered.set()
        assert self.release.wait(10)
        return list(items)


def idle_batcher(fn, on_idle, idle_s=0.05) -> Batcher:
    b = Batcher("idle", fn, QueueLimits(batch_size=1, queue_size=16, wait_s=0),
                hooks=BatchHooks(on_idle=on_idle, idle_s=idle_s))
    b.start()
    return b


def test_on_idle_runs_once_per_quiet_period_after_work_and_never_before_any():
    idles = []
    fn = Held()
    fn.release.set()
    b = idle_batcher(fn, lambda: idles.append(time.monotonic()))
    try:
        time.sleep(0.2)
        assert idles == []  # no encoder call yet: nothing to give back
        sent = time.monotonic()
        assert b.submit_nowait([1]).result(5) == [1]
        wait_until(lambda: len(idles) == 1)
        assert idles[0] - sent >= 0.05  # only after idle_s without work
        time.sleep(0.2)
        assert len(idles) == 1  # a quiet period is reported once, however long
        assert b.submit_nowait([2]).result(5) == [2]
        wait_until(lambda: len(idles) == 2)
    finally:
        b.stop()


def test_on_idle_waits_for_the_queue_to_drain_not_for_each_call():
    idles = []
    fn = Held()
    b = idle_batcher(fn, lambda: idles.append(1))
    try:
        first = b.submit_nowait([1])
        assert fn.entered.wait(5)
        rest = [b.submit_nowait([i]) for i in range(2, 6)]  # queued behind the held call
        time.sleep(0.2)  # longer than idle_s, but the worker is busy: not idle
        assert idles == []
        fn.release.set()
        assert [f.result(5) for f in [first, *rest]] == [[1], [2], [3], [4], [5]]
        assert fn.calls == 5  # batch_size 1: five calls back to back
        wait_until(lambda: len(idles) == 1)
        time.sleep(0.2)
        assert len(idles) == 1
    finally:
        b.stop()


def test_a_failing_idle_hook_does_not_stop_the_worker():
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("hook bug")

    fn = Held()
    fn.release.set()
    b = idle_batcher(fn, broken)
    try:
        assert b.submit_nowait([1]).result(5) == [1]
        wait_until(lambda: calls)
        assert b.alive
        assert b.submit_nowait([2]).result(5) == [2]
    finally:
        b.stop()


def test_stop_does_not_wait_for_the_idle_period():
    fn = Held()
    fn.release.set()
    b = idle_batcher(fn, lambda: None, idle_s=60)
    assert b.submit_nowait([1]).result(5) == [1]
    t0 = time.monotonic()
    b.stop()
    assert time.monotonic() - t0 < 5 and not b.alive


needs_glibc = pytest.mark.skipif(not can_trim(), reason="malloc_trim exists only in glibc; on other C libraries the trimmer does nothing, by design")


HOLES = """
import ctypes, ctypes.util, json
from service.memory import HeapTrimmer, resident_bytes
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
chunks, pins = [], []
for _ in range(800):  # 50 MiB in chunks under the mmap threshold, each followed by a block that stays
    p = libc.malloc(65536)
    ctypes.memset(p, 1, 65536)
    chunks.append(p)
    pins.append(libc.malloc(64))
for p in chunks:
    libc.free(p)
reports = []
trim = HeapTrimmer(min_interval_s=60, on_trim=lambda released, s: reports.append(released))
held = resident_bytes()
first = trim()
after = resident_bytes()
second = trim()
print(json.dumps({"held": held, "after": after, "first": first, "second": second, "reports": reports}))
"""


@needs_glibc
def test_trimmer_hands_freed_holes_in_the_heap_back_and_reports_them():
    """Freed chunks between blocks still in use are holes inside the heap, which glibc keeps resident until
    malloc_trim. A fresh interpreter, so that nothing else of the test process shapes its heap."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", HOLES], cwd=root, capture_output=True, text=True, timeout=60,
                         check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["held"] - r["after"] > 30 * 2**20
    assert r["first"] is True and len(r["reports"]) == 1 and r["reports"][0] > 30 * 2**20
    assert r["second"] is False  # within min_interval_s: skipped


@needs_glibc
def test_the_service_trims_when_its_encoders_go_idle_and_counts_it(app_client):
    c = app_client(memory_trim_idle_s=0.05)
    assert c.post("/search", json={"text": "a red circle", "k": 1}).status_code == 200

    def trims() -> float:
        m = re.search(r"^llm2clip_heap_trims_total (\S+)$", c.get("/metrics").text, re.M)
        return float(m.group(1))

    wait_until(lambda: trims() >= 1)
    assert re.search(r"^llm2clip_heap_trimmed_bytes_total \S+$", c.get("/metrics").text, re.M)


def test_trimming_can_be_turned_off(app_client):
    c = app_client(memory_trim_idle_s=0)
    assert c.post("/search", json={"text": "a red circle", "k": 1}).status_code == 200
    time.sleep(0.3)
    assert "llm2clip_heap_trims_total 0.0" in c.get("/metrics").text


def test_text_encoder_memory_bench_samples_a_bundle(tiny_bundle, corpus, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import text_encoder_memory

    assert text_encoder_memory.main([str(tiny_bundle), str(corpus / "items.jsonl"), "--calls", "50", "--trim",
                                     "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["trim"] is True and [s[0] for s in report["samples"]] == [25, 50]
    assert all(s[1] > 0 for s in report["samples"]) and report["end_mib"] == report["samples"][-1][1]
