"""App factory and lifespan: bundles, encoders and indexes load once, into ``app.state``.

``create_app(settings)`` builds the app; the model and indexes load when it starts (its lifespan), or
are handed in already loaded (``resources=``, what the CLI does so that a bad bundle fails before the
port is served). ``uvicorn --factory service.app:create_app`` works with settings from the environment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm2clip import __version__
from service.access_log import RequestLogMiddleware, install_stderr_handler
from service.asgi import HttpMiddleware
from service.auth import AuthMiddleware, document_security, key_ring, rate_limiter
from service.batching import Batcher, BatchHooks, QueueLimits
from service.cache import TextEmbeddingCache
from service.contract import install_openapi
from service.encode_fns import image_batch_fn, text_batch_fn, text_cost, text_plan
from service.errors import CatchAllMiddleware, register_error_handlers
from service.memory import HeapTrimmer
from service.metrics import HttpMetricsMiddleware, Metrics
from service.reload import IndexReloader, Watcher, show_index
from service.routes import api_router
from service.settings import Settings
from service.shutdown import Drain
from service.state import Resources, Runtime, ServiceState, load_resources

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Long-caption image retrieval with LLM2CLIP embeddings. `POST /search` ranks indexed images for a text "
    "(or captions for an image); `POST /embed` returns embeddings. Errors are "
    '`{"error": {"code": ..., "message": ...}}`.'
)


def create_app(settings: Settings | None = None, resources: Resources | None = None) -> FastAPI:
    """The service as an ASGI app. ``resources``, when given, stay owned (and closed) by the caller."""
    settings = settings or Settings()
    metrics = Metrics()
    app = FastAPI(title="LLM2CLIP retrieval", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = ServiceState(settings=settings, metrics=metrics, preloaded=resources,
                                     drain=Drain(settings.shutdown_timeout_s))
    register_error_handlers(app)
    ring = key_ring(settings)
    limiter = rate_limiter(settings)
    # the last added runs first: the request id and access log see every request, then the metrics, then a
    # crash becomes a 500, then keys and rate limits (before any body is read), then the size limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(AuthMiddleware, ring=ring, limiter=limiter, metrics_auth=settings.metrics_auth,
                       metrics=metrics)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestLogMiddleware, enabled=settings.access_log == "json", log_queries=settings.log_queries)
    if settings.access_log == "json":
        install_stderr_handler()
    app.include_router(api_router)
    install_openapi(app, settings)
    document_security(app, settings, ring)
    log.info("API keys: %s; rate limit: %s", f"{len(ring.keys())} (ids {', '.join(sorted({k.id for k in ring.keys()}))})"
             if ring.enabled else "off (the API is open)",
             f"{settings.rate_limit_per_minute}/min, burst {settings.rate_burst}, per {'key' if ring.enabled else 'client IP'}"
             if limiter else "off")
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    settings = state.settings
    metrics = state.metrics
    # PIL's own bomb guard is process-wide: set it for our limit while we run, restore it after (the
    # per-request check in decode_image is what enforces each app's own limit)
    previous_pixels = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    resources = state.preloaded
    owned = resources is None
    batchers: list[Batcher] = []
    watcher: Watcher | None = None
    try:
        if resources is None:
            resources = await asyncio.to_thread(load_resources, settings)
        await asyncio.to_thread(resources.warmup)
        trim = _heap_trimmer(settings, metrics)
        text_batcher = _text_batcher(resources, settings, _hooks("text", metrics, trim))
        image_batcher = _image_batcher(resources, settings, _hooks("image", metrics, trim))
        batchers = [text_batcher, image_batcher]
        state.drain.attach(asyncio.get_running_loop(), batchers)
        for batcher in batchers:
            batcher.start()
        for modality in resources.indexes:
            served = resources.indexes.served(modality)
            if served is not None:
                show_index(metrics, modality, served)
        reloader = IndexReloader(settings, resources.indexes, resources.bundle, metrics)
        metrics.queue_tokens_limit.set(settings.batch.max_queue_tokens)
        text = resources.text_encoder
        metrics.model_info.labels(fingerprint=resources.bundle.fingerprint[:12], precision=text.precision,
                                  backend=text.backend, device=text.device, version=__version__).set(1)
        state.runtime = Runtime(settings, metrics, resources, text_batcher, image_batcher, _cache(settings, metrics),
                                reloader)
        metrics.ready.set_function(lambda: float(state.runtime is not None and state.runtime.alive))
        if reloader.paths and settings.reload_interval_s > 0:
            watcher = Watcher(reloader, settings.reload_interval_s)
            watcher.start()
        log.info("ready: model %s, indexes %s, watched every %ss, admin API %s", resources.bundle.fingerprint[:12],
                 {m: f"{resources.indexes.version(m)} ({i.count} rows)" for m, i in resources.indexes.items()},
                 settings.reload_interval_s if watcher else "(off)", "on" if settings.admin_token else "off")
        yield
    finally:
        state.runtime = None
        if watcher is not None:
            await asyncio.to_thread(watcher.stop)
        # bounded by what is left of the shutdown timeout: a stuck encoder call cannot hold the exit
        await state.drain.stop_batchers()
        if owned and resources is not None:
            resources.close()
        Image.MAX_IMAGE_PIXELS = previous_pixels


def _heap_trimmer(settings: Settings, metrics: Metrics) -> HeapTrimmer | None:
    """One per app, shared by both batchers: the heap is the process's."""
    if settings.memory_trim_idle_s <= 0:
        return None

    def on_trim(released: int, _seconds: float) -> None:
        metrics.heap_trims.inc()
        metrics.heap_trimmed_bytes.inc(released)

    return HeapTrimmer(min_interval_s=settings.memory_trim_idle_s, on_trim=on_trim)


def _hooks(modality: str, metrics: Metrics, trim: HeapTrimmer | None = None) -> BatchHooks:
    encode_seconds = metrics.encode_seconds.labels(modality=modality)
    batch_size = metrics.encode_batch_size.labels(modality=modality)
    depth = metrics.queue_depth.labels(modality=modality)
    text = modality == "text"

    def on_batch(size: int, seconds: float, cost: int) -> None:
        encode_seconds.observe(seconds)
        batch_size.observe(size)
        if text:
            metrics.encode_batch_tokens.observe(cost)
            metrics.encoded_tokens.inc(cost)

    def on_depth(items: int, cost: int) -> None:
        depth.set(items)
        if text:
            metrics.queue_tokens.set(cost)

    if trim is None:
        return BatchHooks(on_batch, on_depth)
    return BatchHooks(on_batch, on_depth, on_idle=trim, idle_s=trim.min_interval_s)


def _limits(settings: Settings) -> QueueLimits:
    b = settings.batch
    return QueueLimits(batch_size=b.batch_size, queue_size=b.queue_size, wait_s=b.wait_ms / 1000)


def _image_batcher(resources: Resources, settings: Settings, hooks: BatchHooks) -> Batcher:
    return Batcher("image", image_batch_fn(resources.image_encoder), _limits(settings), hooks=hooks)


def _text_batcher(resources: Resources, settings: Settings, hooks: BatchHooks) -> Batcher:
    """Texts arrive tokenized; a round gathers up to one token budget of them and is cut into calls by
    length, so that padding stays small."""
    b = settings.batch
    encoder = resources.text_encoder
    limits = replace(_limits(settings), batch_cost=b.max_batch_tokens, queue_cost=b.max_queue_tokens)
    # a variant whose embeddings depend on their batch mates lowers the encoder's own batch size
    return Batcher("text", text_batch_fn(encoder), limits, cost=text_cost,
                   plan=text_plan(b.max_batch_tokens, min(b.batch_size, encoder.max_batch_size)),
                   hooks=hooks)


def _cache(settings: Settings, metrics: Metrics) -> TextEmbeddingCache:
    hit, miss = metrics.cache_lookups.labels(result="hit"), metrics.cache_lookups.labels(result="miss")
    cache = TextEmbeddingCache(settings.query_cache_size, settings.query_cache_bytes,
                               on_lookup=lambda found: (hit if found else miss).inc())
    metrics.cache_entries.set_function(lambda: len(cache))
    metrics.cache_bytes.set_function(lambda: cache.nbytes)
    return cache


class BodyLimitMiddleware(HttpMiddleware):
    """Refuses request bodies over ``max_bytes`` (413), whether Content-Length announces one or a streamed
    (chunked) body grows past the limit.

    The refusal is raised from ``receive`` inside the handler that reads the body, not answered here
    before routing: the 413 then counts under its route in the metrics, and nothing is read of a body
    that announced itself too large.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = 0
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit():
                declared = int(value)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared > self.max_bytes:
                raise HTTPException(413, f"the request body is larger than {self.max_bytes} bytes")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"the request body is larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)
