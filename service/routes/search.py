"""POST /search: a text or an image in, ranked items out."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Request

from llm2clip.index import Record
from service.access_log import note
from service.errors import ApiError
from service.indexes import ServedIndex, index_setting
from service.routes import inputs
from service.routes.deps import RuntimeDep
from service.schemas import Modality, QueryInfo, SearchHit, SearchRequest, SearchResponse, error_responses
from service.state import Runtime

router = APIRouter(prefix="/search", tags=["search"])

@router.post(
    "",
    response_model=SearchResponse,
    responses=error_responses(400, 413, 415, 422, 429, 503),  # the request body: service/contract.py
)
async def search(request: Request, runtime: RuntimeDep) -> SearchResponse:
    """Rank indexed items for a text or image query: text searches images, an image searches captions."""
    start = time.perf_counter()
    query, image = await _read_query(request, runtime)
    if query.text is not None and image is not None:
        raise ApiError(422, "invalid_request", "give either text or an image, not both")
    if query.text is None and image is None:
        raise ApiError(422, "invalid_request", "give a text or an image to search with")
    modality: Modality = "text" if query.text is not None else "image"
    target: Modality = query.target or ("image" if modality == "text" else "text")
    note(request, modality=modality, target=target, k=query.k, query=query.text)
    # the index current now answers this request, search and records both, even if a reload swaps it out
    with runtime.resources.indexes.lease(target) as served:
        if served is None:
            raise ApiError(503, "index_not_loaded",
                           f"no {target} index is loaded: set {index_setting(target)} and restart the service")
        vector, tokens, truncated = await _encode(runtime, query.text, image)
        kept = await _kept_chars(runtime, query.text) if truncated else None
        note(request, tokens=tokens, truncated=truncated)
        hits = await asyncio.to_thread(_search, runtime, target, served, vector, query.k)
    root_path = request.scope.get("root_path", "")
    results = [
        SearchHit(rank=rank, score=score, id=rec.id, uri=rec.uri, caption=rec.caption,
                  caption_key=rec.caption_key, meta=rec.meta or {},
                  image_url=_image_url(runtime, root_path, rec.uri))
        for rank, (score, rec) in enumerate(hits, start=1)
    ]
    return SearchResponse(
        results=results,
        query=QueryInfo(modality=modality, target=target, tokens=tokens, truncated=truncated, kept_chars=kept),
        took_ms=round((time.perf_counter() - start) * 1000, 3),
        model=runtime.resources.bundle.fingerprint[:12],
        index_version=served.version,
    )


async def _kept_chars(runtime: Runtime, text: str | None) -> int | None:
    """Where a cut text stopped counting, for the page to show; tokenizes once more, only for cut texts."""
    if text is None:
        return None
    return await asyncio.to_thread(runtime.resources.text_encoder.tokenizer.kept_chars, text)


async def _encode(
    runtime: Runtime, text: str | None, image: tuple[str, bytes] | None,
) -> tuple[np.ndarray, int | None, bool]:
    """-> (the query's embedding, its tokens and whether it was cut, for a text)."""
    if text is not None:
        text = inputs.check_text(text, "text", runtime.settings)
        prepared = await inputs.prepare_texts(runtime, [text])
        [encoded] = await inputs.gather_encoded(inputs.submit_texts(runtime, prepared))
        encoded = inputs.finish_texts(runtime, prepared, encoded)
        return encoded[0].vector, encoded[0].tokens, encoded[0].truncated
    assert image is not None
    pixels = await inputs.pixels_of([image], runtime)
    [encoded] = await inputs.gather_encoded(inputs.submit_pixels(runtime, pixels))
    return encoded[0], None, False


async def _read_query(request: Request, runtime: Runtime) -> tuple[SearchRequest, tuple[str, bytes] | None]:
    """-> (the query fields, the image as (field name, bytes) when one was sent)."""
    settings = runtime.settings
    context = {"max_k": settings.max_k}
    if inputs.body_kind(request) == "json":
        query = inputs.validate(SearchRequest, await request.body(), context)
        if query.image_base64 is None:
            return query, None
        return query, ("image_base64", inputs.decode_base64_image(query.image_base64, "image_base64", settings))
    form = await inputs.read_form(request, settings, max_files=1)
    try:
        fields, uploads = inputs.form_fields(form, files=["image"])
        if "image_base64" in fields:
            raise ApiError(422, "invalid_request", "image_base64: send the image as the `image` file field")
        if "text" in fields:
            inputs.check_form_text(fields["text"], "text")
        query = inputs.validate(SearchRequest, fields, context)
        if not uploads["image"]:
            return query, None
        return query, ("image", await inputs.read_upload(uploads["image"][0], "image", settings))
    finally:
        await form.close()


def _search(runtime: Runtime, name: str, served: ServedIndex, vector: np.ndarray, k: int) -> list[tuple[float, Record]]:
    """FAISS search and item lookup in one bundle: blocking, so it runs in a worker thread.

    The thread holds ``served`` itself: a cancelled request (the client went away) leaves its ``with`` block
    while the thread may still be searching, or before it has started.
    """
    if not served.retain():
        raise RuntimeError("the request ended before its search started")  # nobody waits for this answer
    try:
        index = served.bundle
        t0 = time.perf_counter()
        scores, rows = index.search(vector[None, :].astype(np.float32, copy=False), k)
        found = [(float(s), int(r)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0]
        records = index.records([r for _, r in found])
        runtime.metrics.search_seconds.labels(index=name).observe(time.perf_counter() - t0)
    finally:
        served.release()
    if len(records) != len(found):
        raise RuntimeError(f"index {index.path}: rows without items; the index bundle is inconsistent")
    return [(score, rec) for (score, _), rec in zip(found, records, strict=True)]


def _image_url(runtime: Runtime, root_path: str, uri: Any) -> str | None:
    if runtime.resources.corpus_root is None or not uri:
        return None
    return f"{root_path}/items/{quote(str(uri), safe='/')}"
