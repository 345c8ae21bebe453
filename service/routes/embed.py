"""POST /embed: texts and images in, unit embeddings out."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.access_log import note
from service.errors import ApiError
from service.routes import inputs
from service.routes.deps import RuntimeDep
from service.schemas import EmbedRequest, EmbedResponse, error_responses
from service.state import Runtime

router = APIRouter(prefix="/embed", tags=["embed"])

# the request body's schema: service/contract.py
@router.post("", response_model=EmbedResponse, responses=error_responses(400, 413, 415, 422, 429, 503))
async def embed(request: Request, runtime: RuntimeDep) -> EmbedResponse:
    """Embed texts and/or images with the loaded model (unit vectors, comparable by dot product)."""
    settings = runtime.settings
    texts, images = await _read_inputs(request, runtime)
    note(request, texts=len(texts), images=len(images))
    if not texts and not images:
        raise ApiError(422, "invalid_request", "give at least one text or image to embed")
    _check_counts(len(texts), len(images), settings.max_batch)
    texts = [inputs.check_text(t, f"texts[{i}]", settings) for i, t in enumerate(texts)]
    prepared = await inputs.prepare_texts(runtime, texts)
    pixels = await inputs.pixels_of(images, runtime)
    text_future = inputs.submit_texts(runtime, prepared)
    try:
        image_future = inputs.submit_pixels(runtime, pixels)
    except BaseException:
        # the texts must not be encoded for a request that is refused
        if text_future is not None:
            text_future.cancel()
        raise
    text_out, image_out = await inputs.gather_encoded(text_future, image_future)
    text_out = inputs.finish_texts(runtime, prepared, text_out)
    note(request, tokens=sum(t.tokens for t in text_out), truncated=any(t.truncated for t in text_out))
    return EmbedResponse(
        text_embeddings=[t.vector.tolist() for t in text_out],
        image_embeddings=[v.tolist() for v in image_out],
        text_truncated=[t.truncated for t in text_out],
        dim=runtime.resources.bundle.embed_dim,
        model=runtime.resources.bundle.fingerprint,
    )


def _check_counts(texts: int, images: int, max_batch: int) -> None:
    """At most ``max_batch`` texts and at most ``max_batch`` images (each encoder's share of one request): a
    limit per list is what the OpenAPI schema can say (maxItems), so it says exactly what is enforced."""
    for count, what in ((texts, "texts"), (images, "images")):
        if count > max_batch:
            raise ApiError(422, "invalid_request",
                           f"{count} {what}: at most {max_batch} texts and {max_batch} images per request")


async def _read_inputs(request: Request, runtime: Runtime) -> tuple[list[str], list[tuple[str, bytes]]]:
    settings = runtime.settings
    if inputs.body_kind(request) == "json":
        req = inputs.validate(EmbedRequest, await request.body(), {})
        _check_counts(len(req.texts), len(req.images_base64), settings.max_batch)  # before decoding any
        images = [(f"images_base64[{i}]", inputs.decode_base64_image(b64, f"images_base64[{i}]", settings))
                  for i, b64 in enumerate(req.images_base64)]
        return req.texts, images
    # one file over the limit still parses, so that it gets the 422 that says the limit
    form = await inputs.read_form(request, settings, max_files=settings.max_batch + 1)
    try:
        fields, uploads = inputs.form_fields(form, files=["images"])
        texts = fields.get("texts", [])
        texts = texts if isinstance(texts, list) else [texts]
        texts = [inputs.check_form_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
        req = inputs.validate(EmbedRequest, {**fields, "texts": texts}, {})
        if req.images_base64:
            raise ApiError(422, "invalid_request", "images_base64: send images as `images` file fields")
        images = [(f"images[{i}]", await inputs.read_upload(up, f"images[{i}]", settings))
                  for i, up in enumerate(uploads["images"])]
        return req.texts, images
    finally:
        await form.close()
