"""Prometheus metrics: per-route HTTP metrics plus a histogram around each stage (encode, search).

Each app owns a ``CollectorRegistry``, so several apps (tests, or two services in one process) never
collide on the global registry.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.asgi import HttpMiddleware

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _registry() -> CollectorRegistry:
    """A registry with what the global one carries by default: process_cpu_seconds_total,
    process_resident_memory_bytes, ... (Linux), python_info, python_gc_*."""
    r = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=r)
    for collector in (PLATFORM_COLLECTOR, GC_COLLECTOR):
        r.register(collector)
    return r


class Metrics:
    def __init__(self) -> None:
        self.registry = r = _registry()
        self.http_requests = Counter(
            "llm2clip_http_requests", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=r,
        )
        self.http_duration = Histogram(
            "llm2clip_http_request_duration_seconds", "Time from request to the end of the response.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.encode_seconds = Histogram(
            "llm2clip_encode_seconds", "Time of one encoder call (one batch), preprocessing included.",
            ["modality"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.encode_batch_size = Histogram(
            "llm2clip_encode_batch_size", "Items per encoder call.", ["modality"], buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.encode_batch_tokens = Histogram(
            "llm2clip_encode_batch_tokens", "Tokens (not counting padding) per text encoder call.",
            buckets=TOKEN_BUCKETS, registry=r,
        )
        self.encoded_tokens = Counter(
            "llm2clip_encoded_tokens", "Tokens through the text encoder (not counting padding): rate() is tok/s.",
            registry=r,
        )
        self.search_seconds = Histogram(
            "llm2clip_search_seconds", "Time of one FAISS search plus its item lookup.", ["index"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "llm2clip_queue_depth", "Items waiting for or in an encoder call.", ["modality"], registry=r,
        )
        self.queue_tokens = Gauge(
            "llm2clip_queue_tokens", "Tokens of the texts waiting for or in a text encoder call.", registry=r,
        )
        self.cache_lookups = Counter(
            "llm2clip_query_cache_lookups", "Text query cache lookups, by result (hit, miss).", ["result"],
            registry=r,
        )
        self.cache_entries = Gauge("llm2clip_query_cache_entries", "Text query embeddings cached.", registry=r)
        self.cache_bytes = Gauge("llm2clip_query_cache_bytes",
                                 "Memory the text query cache holds (texts, vectors, bookkeeping), in bytes.",
                                 registry=r)
        self.model_info = Gauge(
            "llm2clip_model_info", "The loaded model bundle: always 1, the facts are labels.",
            ["fingerprint", "precision", "backend", "device", "version"], registry=r,
        )
        self._add_index_metrics(r)
        self._add_memory_metrics(r)
        self.ready = Gauge("llm2clip_ready", "1 while /readyz answers ready (model, indexes and encoder workers up).",
                           registry=r)
        self.queue_tokens_limit = Gauge(
            "llm2clip_queue_tokens_limit", "Queued text tokens past which text requests get 429.", registry=r,
        )
        self.rejected = Counter(
            "llm2clip_rejected_requests", "Requests refused with a 4xx, by error code.", ["reason"],
            registry=r,
        )

    def _add_memory_metrics(self, r: CollectorRegistry) -> None:
        self.heap_trims = Counter(
            "llm2clip_heap_trims", "Times the free heap memory was handed back to the system (the encoders "
            "idle for LLM2CLIP_MEMORY_TRIM_IDLE_S after a call).", registry=r)
        self.heap_trimmed_bytes = Counter(
            "llm2clip_heap_trimmed_bytes", "Resident memory those trims gave back, in bytes.", registry=r)

    def _add_index_metrics(self, r: CollectorRegistry) -> None:
        self.index_items = Gauge("llm2clip_index_items", "Rows in each loaded index.", ["index"], registry=r)
        self.index_info = Gauge(
            "llm2clip_index_info",
            "Each served index: always 1, the model bundle it was built with and its version (a hash of its "
            "manifest) as labels; one series per index, replaced when a reload swaps the index.",
            ["index", "model_fingerprint", "version"], registry=r,
        )
        self.index_reloads = Counter(
            "llm2clip_index_reloads",
            "New index versions found (by the watcher or POST /admin/reload), by result: ok (swapped in) or "
            "refused (broken or mismatched: the old index keeps serving).",
            ["index", "result"], registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class HttpMetricsMiddleware(HttpMiddleware):
    """Counts and times every HTTP request under its route template (``/items/{path:path}``, not the raw
    path), so that the number of series stays bounded whatever clients send."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            method = method if method in METHODS else "other"
            self.metrics.http_requests.labels(route=template, method=method, status=str(status)).inc()
            elapsed = time.perf_counter() - start
            self.metrics.http_duration.labels(route=template, method=method).observe(elapsed)
