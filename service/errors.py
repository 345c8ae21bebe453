"""One error body for every failure: ``{"error": {"code": str, "message": str, "request_id": str}}``.

Messages of 4xx errors tell the client what to change. A 500 says "internal error" and nothing else:
the exception goes to the log, never to the client (it may name files, settings or data).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from service.access_log import FIELDS_KEY, request_id_of
from service.asgi import HttpMiddleware

log = logging.getLogger(__name__)

# codes for errors raised by Starlette itself (unknown route, wrong method, malformed multipart, ...)
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
    503: "unavailable",
}


class ApiError(Exception):
    """A request the service refuses, with a message safe and useful to show the client."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(code: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """The error body; ``request_id`` (the X-Request-ID of the request) when the request has one."""
    error = {"code": code, "message": message}
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}


def refusal(
    scope: Scope, metrics: Any, status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The response for a refused request; every 4xx is also counted by reason in the metrics, and its code
    goes in the access log line."""
    if metrics is not None and 400 <= status < 500:
        metrics.rejected.labels(reason=code).inc()
    noted = scope.get(FIELDS_KEY)
    if noted is not None:
        noted["error"] = code
    return JSONResponse(error_body(code, message, request_id_of(scope)), status_code=status,
                        headers=dict(headers or {}))


def error_response(
    request: Request, status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return refusal(request.scope, getattr(request.app.state, "metrics", None), status, code, message, headers)


def describe_validation_errors(errors: Sequence[Any], limit: int = 3) -> str:
    """Pydantic errors -> one short line naming each field; never echoes the input (it may be huge)."""
    parts = []
    for err in list(errors)[:limit]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form")]
        field = ".".join(loc)
        msg = str(err.get("msg", "invalid value"))
        parts.append(f"{field}: {msg}" if field else msg)
    more = len(errors) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts) or "invalid request"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = STATUS_CODES.get(exc.status_code, "error" if exc.status_code < 500 else "internal")
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else code.replace("_", " ")
    if exc.status_code >= 500:
        message = "internal error"
    return error_response(request, exc.status_code, code, message, getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, 422, "invalid_request", describe_validation_errors(exc.errors()))


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


class CatchAllMiddleware(HttpMiddleware):
    """Turns any unhandled exception into a generic 500 and logs it once, with the traceback.

    Starlette's own ``Exception`` handler re-raises after answering, so the server logs the error a
    second time; catching here logs it once and keeps the per-route metrics (outside) seeing a 500.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                # the status line is gone already; let the server drop the connection
                raise
            noted = scope.get(FIELDS_KEY)
            if noted is not None:
                noted["error"] = "internal"
            response = JSONResponse(error_body("internal", "internal error", request_id_of(scope)), status_code=500)
            await response(scope, receive, send)
