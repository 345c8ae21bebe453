"""API keys and per-client rate limits, checked before a request's body is read.

Which routes need a key is decided here, in one place, by route template: every route does, except
liveness and readiness (probes carry no key), the page's HTML (the page sends the key itself), the API
docs, ``/metrics`` unless ``LLM2CLIP_METRICS_AUTH`` is set, and the admin API (its own token: a client's
key must not let it swap the served indexes). A route added later needs a key until it is listed here.

The check is an ASGI middleware, not a route dependency: FastAPI reads a declared body before it runs
dependencies, and a refused client must not get to send 20 MB first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.access_log import KEY_ID_KEY
from service.asgi import HttpMiddleware
from service.errors import refusal
from service.keys import KeyRing, parse_keys
from service.settings import Settings

OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
OWN_TOKEN_PREFIX = "/admin/"
# the routes that run an encoder: the ones worth limiting (an item image is a file read)
RATE_LIMITED = frozenset({"/search", "/embed"})
UNAUTHORIZED = "send a valid API key as Authorization: Bearer <key>"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="llm2clip"'}


def needs_key(template: str | None, metrics_auth: bool) -> bool:
    """Whether the route ``template`` (None: a path no route serves) needs an API key, when keys are on."""
    if template is None:
        return True
    if template in OPEN_ROUTES or template.startswith(OWN_TOKEN_PREFIX):
        return False
    if template == "/metrics":
        return metrics_auth
    return True


class TokenBuckets:
    """A token bucket per client: ``burst`` requests at once, refilled at ``per_minute`` a minute.

    Buckets live in memory, per process (each replica limits on its own). Past ``max_clients`` the full
    buckets are forgotten (a full bucket is the same as none), then the least recently used ones.
    """

    def __init__(self, per_minute: int, burst: int, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, who: str) -> float:
        """0 when ``who`` may go ahead (one token spent); else the seconds until a token is back."""
        now = self.clock()
        tokens, last = self._buckets.pop(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[who] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._forget(now)
        return wait

    def _forget(self, now: float) -> None:
        full = [w for w, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for who in full:
            del self._buckets[who]
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)


def key_ring(settings: Settings) -> KeyRing:
    fixed = parse_keys(settings.api_keys.get_secret_value()) if settings.api_keys is not None else []
    return KeyRing(fixed, settings.api_keys_file)


def rate_limiter(settings: Settings) -> TokenBuckets | None:
    if settings.rate_limit_per_minute <= 0:
        return None
    return TokenBuckets(settings.rate_limit_per_minute, settings.rate_burst)


def flat_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route, routers included in others opened up (recent FastAPI keeps an included router as one
    entry, ``original_router``; older versions copy its routes in)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is None:
            yield route
            continue
        if getattr(getattr(route, "include_context", None), "prefix", ""):
            # the inner routes' paths would lack the prefix: keys would guard the wrong paths
            raise RuntimeError("routers must carry their own prefix (APIRouter(prefix=...)), not include_router's")
        yield from flat_routes(inner.routes)


def _route_of(routes: list[Any], scope: Scope) -> Any:
    """The route the router will pick for this request (a full match, else one that differs only in method),
    or None: an unknown path needs a key too, so a route this table misses is closed, never open."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
        if match == Match.PARTIAL and partial is None:
            partial = route
    return partial


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if (name == b"content-length" and value.strip() not in (b"", b"0")) or name == b"transfer-encoding":
            return True
    return False


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, given = value.decode("latin-1").partition(" ")
            return given.strip() if scheme.lower() == "bearer" and given.strip() else None
    return None


class AuthMiddleware(HttpMiddleware):
    """401 without a valid key on the routes that need one; 429 past a client's rate limit."""

    def __init__(self, app: ASGIApp, ring: KeyRing, limiter: TokenBuckets | None, metrics_auth: bool,
                 metrics: Any) -> None:
        super().__init__(app)
        self.ring = ring
        self.limiter = limiter
        self.metrics_auth = metrics_auth
        self.metrics = metrics
        self._routes: list[Any] | None = None

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.ring.enabled and self.limiter is None:
            await self.app(scope, receive, send)
            return
        if self._routes is None:  # every route is in place by the first request
            self._routes = list(flat_routes(scope["app"].routes))
        route = _route_of(self._routes, scope)
        refused = self._check(scope, getattr(route, "path", None))
        if refused is None:
            await self.app(scope, receive, send)
            return
        if route is not None:
            scope["route"] = route  # the metrics and the access log count it under its route
        if _has_body(scope):
            # the server closes the connection after the answer instead of reading the body to reuse it
            refused.headers["Connection"] = "close"
        await refused(scope, receive, send)

    def _check(self, scope: Scope, template: str | None) -> JSONResponse | None:
        """The refusal for this request, or None to let it through."""
        client = f"ip:{scope['client'][0]}" if scope.get("client") else "ip:unknown"
        if self.ring.enabled and needs_key(template, self.metrics_auth):
            given = _bearer(scope)
            key_id = self.ring.match(given) if given is not None else None
            if key_id is None:
                return refusal(scope, self.metrics, 401, "unauthorized", UNAUTHORIZED, CHALLENGE)
            scope[KEY_ID_KEY] = key_id
            client = f"key:{key_id}"
        if self.limiter is not None and template in RATE_LIMITED:
            wait = self.limiter.take(client)
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                return refusal(scope, self.metrics, 429, "rate_limited",
                               f"rate limit reached: at most {self.limiter.rate * 60:g} requests a minute; "
                               f"retry in {seconds} s", {"Retry-After": str(seconds)})
        return None


def document_security(app: FastAPI, settings: Settings, ring: KeyRing) -> None:
    """Declare in the OpenAPI schema the bearer schemes (API key, admin token) and the routes that need
    them, as this server is configured: without keys, no route needs one."""
    base = app.openapi
    done: list[dict[str, Any]] = []  # FastAPI caches the schema: add to it once

    def openapi() -> dict[str, Any]:
        schema = base()
        if done and done[0] is schema:
            return schema
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        admin = bool(settings.admin_token and settings.admin_token.get_secret_value())
        if admin:  # without a token the admin API is off (404): no scheme to declare
            schemes["adminToken"] = {"type": "http", "scheme": "bearer",
                                     "description": "LLM2CLIP_ADMIN_TOKEN: the admin API only, never an API key."}
        if ring.enabled:
            schemes["apiKey"] = {"type": "http", "scheme": "bearer",
                                 "description": "An API key of LLM2CLIP_API_KEYS or LLM2CLIP_API_KEYS_FILE."}
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        for path, operations in schema.get("paths", {}).items():
            for op in operations.values():
                responses = op.setdefault("responses", {})
                if path.startswith(OWN_TOKEN_PREFIX):
                    if admin:
                        op["security"] = [{"adminToken": []}]
                elif ring.enabled and needs_key(path, settings.metrics_auth):
                    op["security"] = [{"apiKey": []}]
                    responses.setdefault("401", {"description": "No valid API key.", **error})
                if settings.rate_limit_per_minute > 0 and path in RATE_LIMITED:
                    responses.setdefault("429", {"description": "Rate limited or overloaded.", **error})
        done[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
