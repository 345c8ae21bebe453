"""Request ids and the access log: one JSON object a line per request, on the ``llm2clip.access`` logger.

Every request gets an id: the client's ``X-Request-ID`` when it is a sane one (at most 128 characters of
A-Z a-z 0-9 . _ : -), else a fresh uuid4. It comes back in the ``X-Request-ID`` response header, in every
error body and in the log line, so one id follows a request from the client's log to ours.

Routes add what they learn (modality, tokens, k, ...) with ``note(request, ...)``; the middleware writes
the line when the response has ended. The line never holds an API key (only its id) and holds the query
text only with ``LLM2CLIP_LOG_QUERIES=true``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.asgi import HttpMiddleware

access_logger = logging.getLogger("llm2clip.access")

REQUEST_ID_KEY = "llm2clip.request_id"
FIELDS_KEY = "llm2clip.access"
KEY_ID_KEY = "llm2clip.key_id"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# what routes may note; anything else is a programming error, caught in tests
NOTED = frozenset({"modality", "target", "tokens", "truncated", "k", "texts", "images", "query", "error"})


def request_id_of(scope: Scope) -> str | None:
    return scope.get(REQUEST_ID_KEY)


def note(request: Request, **fields: Any) -> None:
    """Record facts about this request for its access log line (no-op outside the middleware)."""
    unknown = set(fields) - NOTED
    if unknown:
        raise ValueError(f"not access log fields: {sorted(unknown)}")
    noted = request.scope.get(FIELDS_KEY)
    if noted is not None:
        noted.update(fields)


def accept_request_id(given: str | None) -> str:
    """The client's id when it is safe to echo and log; else a new one (uuid4, hex)."""
    if given is not None and REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (test capture swaps it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def install_stderr_handler() -> None:
    """Send access lines, bare (the JSON object only), to stderr and nowhere else; idempotent."""
    if not any(isinstance(h, _Stderr) for h in access_logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False


class RequestLogMiddleware(HttpMiddleware):
    """The outermost layer: gives each request its id, returns it in a header, writes the access line."""

    def __init__(self, app: ASGIApp, enabled: bool = True, log_queries: bool = False) -> None:
        super().__init__(app)
        self.enabled = enabled
        self.log_queries = log_queries

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        given = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
        rid = accept_request_id(given)
        scope[REQUEST_ID_KEY] = rid
        fields: dict[str, Any] = {}
        scope[FIELDS_KEY] = fields
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode("ascii"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.enabled:
                self._log(scope, rid, status, time.perf_counter() - start, fields)

    def _log(self, scope: Scope, rid: str, status: int, elapsed: float, fields: dict[str, Any]) -> None:
        route = scope.get("route")
        client = scope.get("client")
        line: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": rid,
            "method": scope.get("method"),
            "route": getattr(route, "path", None) or "unmatched",
            "status": status,
            "latency_ms": round(elapsed * 1000, 3),
            "key_id": scope.get(KEY_ID_KEY),
            "client": client[0] if client else None,
        }
        for name in ("modality", "target", "tokens", "truncated", "k", "texts", "images", "error"):
            line[name] = fields.get(name)
        if self.log_queries and fields.get("query") is not None:
            line["query"] = fields["query"]
        access_logger.info(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
