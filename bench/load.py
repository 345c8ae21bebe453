"""Mixed HTTP load against a running service: N requests at concurrency C (or a steady rate for a duration).

    python bench/load.py URL [--requests 10000] [--concurrency 64] [--mix text=4,image=3,embed=3]
                             [--items ITEMS_JSONL] [--key KEY] [--timeout 30] [--json FILE]

Kinds of request: ``text`` (POST /search with a long caption), ``image`` (POST /search with an image,
multipart), ``embed`` (POST /embed with a long caption and a base64 image). Captions and images come from a
dataset's items.jsonl (``--items``) or are generated. Every caption is made unique, so that no query cache
answers it.

Each request is classified: 200; a 429 whose error code is ``overloaded`` (the bounded queue refusing work:
intended under overload); anything else is an *unintended error*, as are transport errors and timeouts.
The report has status counts, the 429 rate, p50/p90/p99 latency of the 200s per kind, and throughput. The
exit status is 1 when any request ended in an unintended error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import io
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("text", "image", "embed")
OVERLOADED = (429, "overloaded")
KEEPALIVE_EXPIRY_S = 2.0
WORDS = ("red", "green", "blue", "yellow", "circle", "square", "triangle", "small", "large", "bright", "dark",
         "canvas", "middle", "corner", "flat", "paint", "outline", "shadow", "over", "beside", "under")


@dataclass(frozen=True)
class LoadConfig:
    """What to send. ``rate`` (requests/s) makes the load open-loop: request i starts at i / rate seconds,
    and at most ``concurrency`` run at once; without it, requests start as soon as one of the ``concurrency``
    slots is free. ``duration_s`` stops starting requests after that long (with ``rate``)."""

    url: str
    requests: int = 1000
    concurrency: int = 64
    mix: dict[str, float] = field(default_factory=lambda: {"text": 4.0, "image": 3.0, "embed": 3.0})
    key: str | None = None
    timeout_s: float = 30.0
    rate: float | None = None
    duration_s: float | None = None
    seed: int = 0


@dataclass
class Outcome:
    """One request as the client saw it. ``error`` is the transport exception's class name (no response)."""

    kind: str
    start: float  # seconds since the load began
    seconds: float
    status: int | None = None
    code: str | None = None  # the error body's code, for a non-200 answer
    error: str | None = None


@dataclass(frozen=True)
class Payloads:
    captions: list[str]
    images: list[bytes]  # encoded PNG or JPEG


def mix_option(text: str) -> dict[str, float]:
    """``--mix`` for argparse: parse_mix, its refusal as a usage error."""
    try:
        return parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_mix(text: str) -> dict[str, float]:
    """``text=4,image=3,embed=3`` -> weights; unknown kinds and negative or all-zero weights are refused."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in KINDS:
            raise ValueError(f"unknown kind {name!r} in the mix: use {', '.join(KINDS)}")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise ValueError(f"weight of {name!r} is not a number: {weight!r}") from None
        if not mix[name] >= 0:
            raise ValueError(f"weight of {name!r} must be at least 0")
    if not sum(mix.values()) > 0:
        raise ValueError("the mix gives every kind a weight of 0")
    return mix


def generated_payloads(n_images: int = 16, seed: int = 0) -> Payloads:
    """Long captions of random words and small PNGs of random rectangles: for a server whose corpus is not
    at hand."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    captions = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(64)]
    images = []
    for _ in range(n_images):
        image = Image.new("RGB", (96, 96), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        x, y = rng.randrange(48), rng.randrange(48)
        draw.rectangle((x, y, x + 40, y + 40), fill=tuple(rng.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        images.append(buf.getvalue())
    return Payloads(captions, images)


def corpus_payloads(items_jsonl: Path, limit: int = 256) -> Payloads:
    """Long captions and images of a dataset (items.jsonl; image paths relative to its folder)."""
    with open(items_jsonl, encoding="utf-8") as fh:
        items = [json.loads(line) for line in fh if line.strip()][:limit]
    if not items:
        raise ValueError(f"{items_jsonl} has no items")
    captions = [it["captions"]["long"] if isinstance(it["captions"], dict) else it["captions"][0] for it in items]
    images = [(items_jsonl.parent / it["image"]).read_bytes() for it in items[:64]]
    return Payloads(captions, images)


def _request(kind: str, i: int, payloads: Payloads) -> dict[str, Any]:
    """httpx.post keyword arguments of request ``i``."""
    text = f"{payloads.captions[i % len(payloads.captions)]} #{kind}{i}"
    image = payloads.images[i % len(payloads.images)]
    if kind == "text":
        return {"url": "/search", "json": {"text": text, "k": 10}}
    if kind == "image":
        return {"url": "/search", "files": {"image": ("q.png", image, "image/png")}, "data": {"k": "10"}}
    return {"url": "/embed", "json": {"texts": [text], "images_base64": [base64.b64encode(image).decode()]}}


async def _send(client: Any, kind: str, i: int, payloads: Payloads, t0: float) -> Outcome:
    import httpx

    start = time.perf_counter()
    outcome = Outcome(kind, start - t0, 0.0)
    try:
        r = await client.post(**_request(kind, i, payloads))
        outcome.status = r.status_code
        if r.status_code != 200:
            try:
                outcome.code = r.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                outcome.code = None
    except httpx.HTTPError as exc:
        outcome.error = type(exc).__name__
    outcome.seconds = time.perf_counter() - start
    return outcome


def _kinds(cfg: LoadConfig, n: int) -> Callable[[int], str]:
    rng = random.Random(cfg.seed)
    names = [k for k in KINDS if cfg.mix.get(k, 0) > 0]
    order = rng.choices(names, weights=[cfg.mix[k] for k in names], k=min(n, 100_000))
    return lambda i: order[i % len(order)]


async def run_load(cfg: LoadConfig, payloads: Payloads,
                   on_start: Callable[[float], None] | None = None) -> list[Outcome]:
    """Send the load; every request's outcome, in the order they finished. ``on_start`` runs once the client
    is up, just before the first request, with the perf_counter() that outcomes' ``start`` counts from (the
    shutdown test schedules its signal there)."""
    import httpx

    headers = {"Authorization": f"Bearer {cfg.key}"} if cfg.key else {}
    # idle connections are dropped before the server's keep-alive timeout (uvicorn's: 5 s) would close them:
    # a POST sent as the server closes its connection fails unanswered (and httpx does not retry a POST)
    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency,
                          keepalive_expiry=KEEPALIVE_EXPIRY_S)
    n = cfg.requests if cfg.rate is None else int(cfg.rate * (cfg.duration_s or cfg.requests / cfg.rate))
    kind_of = _kinds(cfg, n)
    outcomes: list[Outcome] = []
    sem = asyncio.Semaphore(cfg.concurrency)
    async with httpx.AsyncClient(base_url=cfg.url.rstrip("/"), timeout=cfg.timeout_s, limits=limits,
                                 headers=headers) as client:
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            async with sem:
                outcomes.append(await _send(client, kind_of(i), i, payloads, t0))

        if on_start is not None:
            on_start(t0)
        tasks = []
        for i in range(n):
            if cfg.rate is not None:
                await asyncio.sleep(max(0.0, t0 + i / cfg.rate - time.perf_counter()))
            else:
                await sem.acquire()  # start no more tasks than slots: 10,000 idle tasks cost memory
                sem.release()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return outcomes


def unintended(o: Outcome, allowed: frozenset[tuple[int, str]] = frozenset({OVERLOADED})) -> bool:
    """Not a 200 and not an allowed (status, code) refusal: a transport error, a timeout, any other status."""
    if o.error is not None:
        return True
    return o.status != 200 and (o.status, o.code) not in allowed


def _quantiles(seconds: list[float]) -> dict[str, float | None]:
    s = sorted(seconds)

    def q(p: float) -> float | None:
        return round(s[min(len(s) - 1, int(len(s) * p))] * 1000, 1) if s else None

    return {"p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99)}


def summarize(outcomes: list[Outcome], seconds: float,
              allowed: frozenset[tuple[int, str]] = frozenset({OVERLOADED})) -> dict[str, Any]:
    """Status counts, the 429 rate, unintended errors (a few examples), latency of the 200s per kind."""
    statuses = collections.Counter(o.error or f"{o.status} {o.code or ''}".strip() for o in outcomes)
    bad = [o for o in outcomes if unintended(o, allowed)]
    per_kind = {}
    for kind in KINDS:
        mine = [o for o in outcomes if o.kind == kind]
        if mine:
            ok = [o.seconds for o in mine if o.status == 200]
            per_kind[kind] = {"requests": len(mine), "ok": len(ok), **_quantiles(ok)}
    ok_all = [o.seconds for o in outcomes if o.status == 200]
    return {
        "requests": len(outcomes), "seconds": round(seconds, 2),
        "req_per_s": round(len(outcomes) / seconds, 1) if seconds > 0 else None,
        "ok_per_s": round(len(ok_all) / seconds, 1) if seconds > 0 else None,
        "statuses": dict(statuses.most_common()),
        "rate_429": round(sum(o.status == 429 for o in outcomes) / max(1, len(outcomes)), 4),
        "unintended": len(bad), "unintended_examples": [asdict(o) for o in bad[:5]],
        "all": _quantiles(ok_all), "kinds": per_kind,
    }


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="the service, e.g. http://127.0.0.1:8000")
    ap.add_argument("--requests", "-n", type=int, default=1000, help="requests to send (default 1000)")
    ap.add_argument("--concurrency", "-c", type=int, default=64, help="requests in flight at most (default 64)")
    ap.add_argument("--mix", type=mix_option, default="text=4,image=3,embed=3",
                    help="relative weights of the kinds (default text=4,image=3,embed=3)")
    ap.add_argument("--items", type=Path, help="a dataset's items.jsonl to take captions and images from "
                                               "(default: generated ones)")
    ap.add_argument("--key", help="API key, sent as 'Authorization: Bearer KEY'")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as timed out")
    ap.add_argument("--rate", type=float, help="start requests at this steady rate (req/s) instead of as fast "
                                               "as the concurrency allows")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON ('-': stdout only)")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or not args.timeout > 0 or (args.rate is not None and
                                                                                not args.rate > 0):
        ap.error("--requests, --concurrency, --timeout and --rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    payloads = corpus_payloads(args.items) if args.items else generated_payloads()
    cfg = LoadConfig(args.url, args.requests, args.concurrency, args.mix, args.key, args.timeout, args.rate)
    t0 = time.perf_counter()
    outcomes = asyncio.run(run_load(cfg, payloads))
    report = {"config": {**asdict(cfg), "key": bool(cfg.key)}, **summarize(outcomes, time.perf_counter() - t0)}
    text = json.dumps(report, indent=2)
    if args.json is not None and str(args.json) != "-":
        args.json.write_text(text + "\n")
    print(text)  # noqa: T201
    if report["unintended"]:
        print(f"load: {report['unintended']} unintended errors (see unintended_examples)", file=sys.stderr)  # noqa: T201
    return 1 if report["unintended"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
