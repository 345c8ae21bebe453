"""A real `llm2clip serve` under mixed load (bench/load.py), and a short soak (bench/soak.py)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from service_helpers import start_server, stop_server

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import load as bench_load  # noqa: E402
import soak as bench_soak  # noqa: E402

LOAD_REQUESTS = 10_000
LOAD_CONCURRENCY = 64


def serve_args(tiny_bundle: Path, indexes: tuple[Path, Path]) -> list[str]:
    return ["--model", str(tiny_bundle), "--image-index", str(indexes[0]), "--text-index", str(indexes[1]),
            "--threads", "1", "--log-level", "warning"]


def test_outcomes_are_classified():
    ok = bench_load.Outcome("text", 0, 0.1, status=200)
    busy = bench_load.Outcome("text", 0, 0.1, status=429, code="overloaded")
    other_429 = bench_load.Outcome("text", 0, 0.1, status=429, code="rate_limited")
    error = bench_load.Outcome("image", 0, 0.1, status=500, code="internal")
    dropped = bench_load.Outcome("embed", 0, 30.0, error="ReadTimeout")
    assert [bench_load.unintended(o) for o in (ok, busy, other_429, error, dropped)] == [False, False, True, True,
                                                                                        True]
    report = bench_load.summarize([ok, busy, other_429, error, dropped], 2.0)
    assert report["unintended"] == 3 and report["rate_429"] == 0.4
    assert report["statuses"] == {"200": 1, "429 overloaded": 1, "429 rate_limited": 1, "500 internal": 1,
                                  "ReadTimeout": 1}
    assert report["kinds"]["text"]["ok"] == 1 and report["kinds"]["embed"]["p50_ms"] is None


def test_mix_is_checked():
    assert bench_load.parse_mix("text=1,embed=0.5") == {"text": 1.0, "embed": 0.5}
    for bad in ("text=1,video=2", "text=x", "text=-1", "text=0,image=0"):
        with pytest.raises(ValueError):
            bench_load.parse_mix(bad)


def test_soak_verdict():
    base = {"rss_mib": 200.0, "open_fds": 20.0, "queue_text": 0.0, "queue_image": 0.0, "queue_tokens": 0.0}
    assert bench_soak.verdict(base, {**base, "rss_mib": 215.0}, 0)["passed"]
    assert not bench_soak.verdict(base, {**base, "rss_mib": 221.0}, 0)["rss_grew_under_10pct"]
    assert not bench_soak.verdict(base, {**base, "open_fds": 25.0}, 0)["passed"]
    assert not bench_soak.verdict(base, {**base, "queue_image": 3.0}, 0)["passed"]
    assert not bench_soak.verdict(base, base, 1)["passed"]
    # the bounded cache's own fill is accounted; growth anywhere else is not
    cached = {**base, "cache_mib": 0.0}
    filled = bench_soak.verdict(cached, {**cached, "rss_mib": 240.0, "cache_mib": 30.0}, 0)
    assert filled["passed"] and filled["rss_growth"] == 0.2 and filled["rss_growth_beyond_cache"] == 0.05
    assert not bench_soak.verdict(cached, {**cached, "rss_mib": 240.0, "cache_mib": 10.0}, 0)["passed"]


@pytest.mark.slow
def test_mixed_load_has_no_unintended_error(tiny_bundle, indexes, corpus):
    """10,000 requests at concurrency 64 (long-caption search, image search, /embed of a text and an image):
    each ends in a 200 or a 429 `overloaded`; no 5xx, other 4xx, reset, or timeout."""
    proc, base = start_server(serve_args(tiny_bundle, indexes))
    try:
        cfg = bench_load.LoadConfig(base, requests=LOAD_REQUESTS, concurrency=LOAD_CONCURRENCY, timeout_s=60)
        outcomes = asyncio.run(bench_load.run_load(cfg, bench_load.corpus_payloads(corpus / "items.jsonl")))
        report = bench_load.summarize(outcomes, max(o.start + o.seconds for o in outcomes))
    finally:
        output = stop_server(proc)
    print(json.dumps({k: v for k, v in report.items() if k != "unintended_examples"}))  # noqa: T201  # -s shows it
    assert report["requests"] == LOAD_REQUESTS
    assert report["unintended"] == 0, report["unintended_examples"]
    assert set(report["kinds"]) == {"text", "image", "embed"}
    assert report["statuses"].get("200", 0) + report["statuses"].get("429 overloaded", 0) == LOAD_REQUESTS
    assert proc.returncode == 0 and "Traceback" not in output, output


@pytest.mark.slow
def test_short_soak_returns_to_baseline(tiny_bundle, indexes, corpus, tmp_path):
    """bench/soak.py for 30 s at 40 req/s against a server it starts: memory grows under 10%, the queues
    and open fds come back to the idle baseline, no unintended error."""
    out = tmp_path / "soak.json"
    code = bench_soak.main(["--model", str(tiny_bundle), "--image-index", str(indexes[0]), "--text-index",
                            str(indexes[1]), "--threads", "1", "--duration", "30", "--rate", "40", "--warmup", "8",
                            "--cooldown", "5", "--interval", "3", "--items", str(corpus / "items.jsonl"),
                            "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["checks"]["passed"], report["checks"]
    assert code == 0
    assert report["load"]["requests"] == 1200 and len(report["samples"]) >= 10
    assert report["peak"]["open_fds"] > report["baseline"]["open_fds"]  # the load's connections were seen
