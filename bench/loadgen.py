"""Closed-loop HTTP load at a fixed concurrency: req/s, p50 and p99 of the answered requests, status codes.

    python bench/loadgen.py URL ITEMS_JSONL MODE CONCURRENCY N [--model NAME]

MODE: ``search`` (POST /search a long caption), ``image`` (POST /search an image of the corpus, multipart),
``embed`` (POST /embed one long caption), ``infinity`` (POST /embeddings, Infinity's OpenAI-style route).
Every caption is made unique (`` #<mode><i>`` appended), so that no query cache answers it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Corpus:
    """Where the queries come from: a dataset's items and the folder their image paths are relative to."""

    items: list[dict[str, Any]]
    root: Path


def load_items(items_jsonl: Path, limit: int = 500) -> list[dict[str, Any]]:
    with open(items_jsonl, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()][:limit]


async def run_load(base: str, corpus: Corpus, mode: str, concurrency: int, n: int,
                   model: str = "") -> dict[str, Any]:
    import httpx

    items, root = corpus.items, corpus.root
    captions = [it["captions"]["long"] if isinstance(it["captions"], dict) else it["captions"][0] for it in items]
    images = [(root / it["image"]).read_bytes() for it in items[:64]] if mode == "image" else []
    latencies: list[float] = []
    codes: collections.Counter[int] = collections.Counter()
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=base.rstrip("/"), timeout=300, limits=limits) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            text = f"{captions[i % len(captions)]} #{mode}{i}"  # unique across modes too: no cache hit
            async with sem:
                t0 = time.perf_counter()
                if mode == "search":
                    r = await client.post("/search", json={"text": text, "k": 10})
                elif mode == "image":
                    r = await client.post("/search", files={"image": ("q.png", images[i % len(images)], "image/png")},
                                          data={"k": "10"})
                elif mode == "embed":
                    r = await client.post("/embed", json={"texts": [text]})
                else:
                    r = await client.post("/embeddings", json={"model": model, "input": [text]})
                codes[r.status_code] += 1
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)

        # a short warm-up outside the measurement: first requests allocate and pick kernels
        await asyncio.gather(*(one(10_000_000 + i) for i in range(min(concurrency, 8))))
        codes.clear()
        latencies.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        seconds = time.perf_counter() - t0
    latencies.sort()

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else float("nan")

    return {"mode": mode, "concurrency": concurrency, "n": n, "ok_req_s": codes[200] / seconds,
            "p50_ms": q(0.5), "p99_ms": q(0.99), "codes": dict(codes), "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("items", type=Path, help="a dataset's items.jsonl (captions and image paths)")
    ap.add_argument("mode", choices=["search", "image", "embed", "infinity"])
    ap.add_argument("concurrency", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--model", default="", help="model name Infinity expects (mode infinity)")
    args = ap.parse_args()
    corpus = Corpus(load_items(args.items), args.items.parent)
    result = asyncio.run(run_load(args.url, corpus, args.mode, args.concurrency, args.n, args.model))
    print(json.dumps(result))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
