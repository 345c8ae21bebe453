"""The admin API: POST /admin/reload. Off (404) unless ``LLM2CLIP_ADMIN_TOKEN`` is set; then every call
must send ``Authorization: Bearer <token>``."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from service.errors import ApiError
from service.indexes import index_setting
from service.routes import inputs
from service.routes.deps import RuntimeDep, ServiceDep
from service.schemas import ReloadedIndex, ReloadRequest, ReloadResponse, error_responses

router = APIRouter(prefix="/admin", tags=["admin"])


def require_admin(request: Request, service: ServiceDep) -> None:
    """404 while the admin API is off; 401 unless the bearer token matches (compared in constant time)."""
    token = service.settings.admin_token
    if token is None:
        raise ApiError(404, "not_found", "the admin API is off on this server: it needs LLM2CLIP_ADMIN_TOKEN")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest on bytes: a str with non-ASCII characters would raise instead of answering 401
    matches = hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())
    if scheme.lower() != "bearer" or not matches:
        raise ApiError(401, "unauthorized", "send the admin token as Authorization: Bearer <token>",
                       {"WWW-Authenticate": "Bearer"})


AdminDep = Annotated[None, Depends(require_admin)]


@router.post("/reload", response_model=ReloadResponse, responses=error_responses(401, 404, 409, 415, 422, 503))
async def reload(_: AdminDep, request: Request, runtime: RuntimeDep) -> ReloadResponse:
    """Look for a new version of each configured index (or the one named) now, and swap it in.

    A new version is loaded in the background, verified and checked against the served model, dim and
    modality; requests keep running on the old one, which closes when the last of them ends. Answers the
    version and rows served per index; 409 (the old version still serving) with the reason when a new
    version was refused. Needs `Authorization: Bearer <LLM2CLIP_ADMIN_TOKEN>`; 404 when no token is set.
    """
    body = await request.body()
    if body.strip():
        inputs.body_kind(request)  # 415 unless JSON
    req = inputs.validate(ReloadRequest, body if body.strip() else b"{}", {})
    reloader = runtime.reloader
    configured = reloader.paths if reloader is not None else {}
    if req.index is not None and req.index not in configured:
        raise ApiError(422, "invalid_request",
                       f"index: no {req.index} index is configured ({index_setting(req.index)}): nothing to reload")
    if reloader is None or not configured:
        raise ApiError(422, "invalid_request", "no index is configured: nothing to reload")
    outcomes = await asyncio.to_thread(reloader.reload, req.index)
    if any(o.status == "refused" for o in outcomes):
        raise ApiError(409, "reload_refused", "; ".join(o.describe() for o in outcomes))
    return ReloadResponse(indexes={
        o.index: ReloadedIndex(status="loaded" if o.status == "loaded" else "unchanged", version=o.version,
                               count=o.count, previous=o.previous)
        for o in outcomes
    })
