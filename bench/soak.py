"""Soak: a steady mixed load for a while, watching the server's memory, open files and queues.

    python bench/soak.py --model BUNDLE --image-index IDX --text-index IDX [--duration 300] [--rate 40]
    python bench/soak.py --url http://127.0.0.1:8000 [--duration 300] [--rate 40]

Starts ``llm2clip serve`` on a free port of 127.0.0.1 (or uses ``--url``), warms it up with the same load
for ``--warmup`` seconds, lets it go idle and takes the *baseline*: resident memory, open file descriptors,
queued items per encoder and queued text tokens, from the service's own /metrics. Then it runs the load
(bench/load.py's mixed text search, image search and /embed, started at ``--rate`` requests/s, at most
``--concurrency`` in flight) for ``--duration`` seconds, sampling every ``--interval`` seconds; stops; waits
``--cooldown`` seconds; and takes the *end* sample. It passes when the load had no unintended error (see
load.py), resident memory at the end is less than 10% above the baseline, and the queues and open fds are
back at (or under) the baseline. Prints a JSON report (``--json FILE`` keeps it); exit status 1 on a failure.

Every caption sent is new, so the text query cache fills up during a soak (``cache_entries`` and
``cache_mib`` in the samples), by design, up to LLM2CLIP_QUERY_CACHE_SIZE entries and
LLM2CLIP_QUERY_CACHE_BYTES bytes. The memory check counts RSS growth beyond what the cache reports holding
(both are printed); set LLM2CLIP_QUERY_CACHE_SIZE=0 in the environment (a started server inherits it) to
take the cache out altogether.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load import LoadConfig, corpus_payloads, generated_payloads, mix_option, run_load, summarize  # noqa: E402

RSS_GROWTH_LIMIT = 0.10


def parse_metrics(text: str) -> dict[str, float]:
    """The figures a soak watches, from a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("process_resident_memory_bytes", "process_open_fds", "llm2clip_queue_tokens",
                               "llm2clip_query_cache_entries", "llm2clip_query_cache_bytes"):
                out[sample.name] = sample.value
            elif sample.name == "llm2clip_queue_depth":
                out[f"queue_depth_{sample.labels.get('modality', '')}"] = sample.value
    return {
        "rss_mib": round(out.get("process_resident_memory_bytes", float("nan")) / 2**20, 1),
        "open_fds": out.get("process_open_fds", float("nan")),
        "queue_text": out.get("queue_depth_text", 0.0),
        "queue_image": out.get("queue_depth_image", 0.0),
        "queue_tokens": out.get("llm2clip_queue_tokens", 0.0),
        # bounded (LLM2CLIP_QUERY_CACHE_SIZE / _BYTES) but it grows with every new text until full: memory it
        # explains, and reports
        "cache_entries": out.get("llm2clip_query_cache_entries", 0.0),
        "cache_mib": round(out.get("llm2clip_query_cache_bytes", 0.0) / 2**20, 2),
    }


async def sample(client: httpx.AsyncClient, t0: float) -> dict[str, float]:
    r = await client.get("/metrics")
    r.raise_for_status()
    return {"t_s": round(time.perf_counter() - t0, 1), **parse_metrics(r.text)}


def verdict(baseline: dict[str, float], end: dict[str, float], unintended: int) -> dict[str, Any]:
    """The soak's checks; ``passed`` when all hold.

    Memory: the query cache is bounded (LLM2CLIP_QUERY_CACHE_BYTES) and grows with every new caption until
    full, by design; it reports what it holds (``llm2clip_query_cache_bytes``). The check is on what RSS grew
    by beyond that: a leak anywhere else shows there, the cache's own fill does not. Both figures are kept."""
    base_rss = baseline["rss_mib"]
    growth = (end["rss_mib"] - base_rss) / base_rss
    cache_growth = end.get("cache_mib", 0.0) - baseline.get("cache_mib", 0.0)
    beyond_cache = (end["rss_mib"] - base_rss - cache_growth) / base_rss
    checks = {
        "rss_growth": round(growth, 4),
        "cache_growth_mib": round(cache_growth, 2),
        "rss_growth_beyond_cache": round(beyond_cache, 4),
        "rss_grew_under_10pct": beyond_cache < RSS_GROWTH_LIMIT,
        "queues_back_to_baseline": all(end[k] <= baseline[k] for k in ("queue_text", "queue_image", "queue_tokens")),
        "fds_back_to_baseline": end["open_fds"] <= baseline["open_fds"],
        "no_unintended_errors": unintended == 0,
    }
    checks["passed"] = all(v for k, v in checks.items() if isinstance(v, bool))
    return checks


async def soak(url: str, cfg: LoadConfig, payloads: Any, phases: dict[str, float]) -> dict[str, Any]:
    """Warm-up, idle baseline, load with samples every ``phases['interval']`` s, cooldown, end sample."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        t0 = time.perf_counter()
        warm = LoadConfig(**{**asdict(cfg), "duration_s": phases["warmup"]})
        await run_load(warm, payloads)
        await asyncio.sleep(min(5.0, phases["cooldown"]))
        baseline = await sample(client, t0)
        samples = [baseline]
        load = asyncio.create_task(run_load(cfg, payloads))
        loaded_at = time.perf_counter()
        while not load.done():
            await asyncio.wait({load}, timeout=phases["interval"])
            samples.append(await sample(client, t0))
        outcomes = load.result()
        seconds = time.perf_counter() - loaded_at
        await asyncio.sleep(phases["cooldown"])
        end = await sample(client, t0)
        samples.append(end)
    peak = {k: max(s[k] for s in samples) for k in baseline if k != "t_s"}
    report = summarize(outcomes, seconds)
    return {"load": report, "baseline": baseline, "end": end, "peak": peak, "samples": samples,
            "checks": verdict(baseline, end, report["unintended"])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(serve_args: list[str], log: Path | None = None, log_level: str = "warning",
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``llm2clip serve SERVE_ARGS`` on a free port (this process's environment and ``env``); returns once
    /readyz answers 200."""
    port = free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115  # the server outlives this function
    proc = subprocess.Popen([sys.executable, "-m", "llm2clip_cli.main", "serve", *serve_args, "--port", str(port),
                             "--log-level", log_level], cwd=HERE.parent, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the server was not ready in 120 s")
        time.sleep(0.2)


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running service (default: start one with the bundle flags below)")
    ap.add_argument("--model", type=Path, help="model bundle of the server to start")
    ap.add_argument("--image-index", type=Path, help="image index of the server to start")
    ap.add_argument("--text-index", type=Path, help="caption index of the server to start")
    ap.add_argument("--threads", type=int, help="ONNX Runtime threads per encoder of the server to start")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    ap.add_argument("--rate", type=float, default=40.0, help="requests started per second (default 40)")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight at most (default 32)")
    ap.add_argument("--mix", type=mix_option, default="text=4,image=3,embed=3", help="see bench/load.py")
    ap.add_argument("--items", type=Path, help="items.jsonl to take captions and images from (default: generated)")
    ap.add_argument("--key", help="API key, sent as 'Authorization: Bearer KEY'")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the baseline (default 20)")
    ap.add_argument("--cooldown", type=float, default=10.0, help="idle seconds before the end sample (default 10)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    ap.add_argument("--server-log", type=Path, help="where the started server's output goes (default: discarded)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the report here")
    args = ap.parse_args(argv)
    if args.url is None and args.model is None:
        ap.error("give --url, or --model (and indexes) to start a server")
    for name in ("duration", "rate", "concurrency", "interval"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name} must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    proc = None
    url = args.url
    if url is None:
        serve_args = [f"--{name.replace('_', '-')}={value}" for name in ("model", "image_index", "text_index", "threads")
                      if (value := getattr(args, name)) is not None]
        proc, url = start_server(serve_args, args.server_log)
    payloads = corpus_payloads(args.items) if args.items else generated_payloads()
    cfg = LoadConfig(url, concurrency=args.concurrency, mix=args.mix, key=args.key, rate=args.rate,
                     duration_s=args.duration)
    phases = {"warmup": args.warmup, "cooldown": args.cooldown, "interval": args.interval}
    try:
        report = asyncio.run(soak(url, cfg, payloads, phases))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    report["config"] = {"duration_s": args.duration, "rate": args.rate, "concurrency": args.concurrency,
                        "mix": args.mix, "warmup_s": args.warmup, "cooldown_s": args.cooldown}
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)  # noqa: T201
    return 0 if report["checks"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
