"""Request bodies in, embeddings out: content types, base64 and image decoding with limits, and the
batcher calls. Every check here runs before any expensive work."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from llm2clip.tokenizer import normalize_text
from service.batching import Overloaded, ShuttingDown
from service.contract import JSON_CONTAINER_RE
from service.encode_fns import TextEmbedding, TokenizedText
from service.errors import ApiError
from service.settings import Settings
from service.shutdown import shutting_down
from service.state import Runtime

M = TypeVar("M", bound=BaseModel)

DECODABLE = "send a PNG, JPEG, WebP, GIF, BMP or TIFF file"


def body_kind(request: Request) -> Literal["json", "multipart"]:
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return "json"
    if media == "multipart/form-data":
        return "multipart"
    shown = media[:80] or "no content type"
    raise ApiError(415, "unsupported_media_type",
                   f"send application/json or multipart/form-data, not {shown}")


def validate(model: type[M], data: bytes | dict[str, Any], context: dict[str, Any]) -> M:
    """Validate JSON bytes (strictly: JSON has types, so ``"10"`` is no integer) or form fields (every value a
    string, read as the schema's type) into ``model``; errors become a 422 naming the field (or a 400 for a
    body that is not JSON at all)."""
    try:
        if isinstance(data, bytes):
            return model.model_validate_json(data, strict=True, context=context)
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
        raise RequestValidationError(errors) from None


async def read_form(request: Request, settings: Settings, max_files: int) -> FormData:
    # a text field may hold max_text_chars characters of up to 4 UTF-8 bytes each
    return await request.form(max_files=max_files, max_fields=max_files + 16,
                              max_part_size=settings.max_text_chars * 4 + 1024)


def form_fields(form: FormData, files: Sequence[str]) -> tuple[dict[str, Any], dict[str, list[UploadFile]]]:
    """Split a form into plain fields (repeated names become lists) and the uploads of ``files``."""
    fields: dict[str, Any] = {}
    uploads: dict[str, list[UploadFile]] = {name: [] for name in files}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in uploads:
                raise ApiError(422, "invalid_request",
                               f"{name}: unexpected file; files go in {', '.join(files)}")
            uploads[name].append(value)
        elif name in uploads:
            raise ApiError(422, "invalid_request", f"{name}: must be a file upload")
        elif name in fields:
            prev = fields[name]
            fields[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            fields[name] = value
    return fields, uploads


def check_form_text(value: Any, field: str) -> Any:
    """A form text field that looks like a JSON object or array is refused, as the OpenAPI schema says
    (service/contract.py): it is a JSON body sent as a form field, not a text."""
    if isinstance(value, str) and JSON_CONTAINER_RE.match(value):
        raise ApiError(422, "invalid_request",
                       f"{field}: a JSON object or array is not a text: send JSON bodies as application/json")
    return value


def check_text(text: str, field: str, settings: Settings) -> str:
    if not text.strip():
        raise ApiError(422, "invalid_request", f"{field}: must not be empty")
    if len(text) > settings.max_text_chars:
        raise ApiError(413, "text_too_long",
                       f"{field}: {len(text)} characters; at most {settings.max_text_chars} are accepted")
    return text


def _too_large(field: str, settings: Settings) -> ApiError:
    return ApiError(413, "image_too_large",
                    f"{field}: the image is larger than {settings.max_image_bytes} bytes")


def decode_base64_image(value: str, field: str, settings: Settings) -> bytes:
    if value.startswith("data:"):
        value = value.partition(",")[2]
    # 4 base64 characters carry 3 bytes: refuse an oversized image before decoding it
    if len(value) > (settings.max_image_bytes + 2) // 3 * 4 + 1024:
        raise _too_large(field, settings)
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"{field}: not valid base64") from None
    if not data:
        raise ApiError(400, "invalid_image", f"{field}: the image is empty")
    if len(data) > settings.max_image_bytes:
        raise _too_large(field, settings)
    return data


async def read_upload(upload: UploadFile, field: str, settings: Settings) -> bytes:
    limit = settings.max_image_bytes
    if upload.size is not None and upload.size > limit:
        raise _too_large(field, settings)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise _too_large(field, settings)
    if not data:
        raise ApiError(400, "invalid_image", f"{field}: the image is empty")
    return data


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Bytes -> a loaded PIL image, refusing decompression bombs from the header, before decoding."""
    too_many = f"{field}: the image has more than {max_pixels} pixels"
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ApiError(413, "image_too_large", f"{too_many} ({width}x{height})")
        if width < 1 or height < 1:
            raise ApiError(400, "invalid_image", f"{field}: the image has no pixels")
        image.load()
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL's own guard (Image.MAX_IMAGE_PIXELS) fired while reading the header
        raise ApiError(413, "image_too_large", too_many) from None
    except Exception:
        # malformed files make PIL's plugins raise many types (OSError, SyntaxError, struct.error, ...)
        raise ApiError(400, "invalid_image", f"{field}: could not decode the image: {DECODABLE}") from None
    return image


def image_to_pixels(data: bytes, field: str, runtime: Runtime) -> np.ndarray:
    image = decode_image(data, field, runtime.settings.max_image_pixels)
    return runtime.resources.image_encoder.preprocess([image])[0]


async def pixels_of(images: Sequence[tuple[str, bytes]], runtime: Runtime) -> list[np.ndarray]:
    """Decode and preprocess each (field, bytes) in a worker thread, in parallel."""
    return list(await asyncio.gather(*(asyncio.to_thread(image_to_pixels, data, field, runtime)
                                       for field, data in images)))


@dataclass
class PreparedTexts:
    """Texts on their way to the encoder: cached answers found, the rest tokenized."""

    keys: list[tuple[str, str, str]]  # (normalised text, model fingerprint, precision) per text
    found: dict[tuple[str, str, str], TextEmbedding]
    missing: list[tuple[str, str, str]]  # keys to encode, each once
    tokenized: list[TokenizedText]  # same order as ``missing``


async def prepare_texts(runtime: Runtime, texts: list[str]) -> PreparedTexts:
    """Look each text up in the query cache and tokenize the others in a worker thread: the encoder's
    single thread never waits on the tokenizer, and a cached query never reaches the queue."""
    encoder = runtime.resources.text_encoder
    model = runtime.resources.bundle.fingerprint
    keys = [(normalize_text(t), model, encoder.precision) for t in texts]
    found: dict[tuple[str, str, str], TextEmbedding] = {}
    missing: list[tuple[str, str, str]] = []
    for key in dict.fromkeys(keys):
        hit = runtime.text_cache.get(key)
        if hit is not None:
            found[key] = hit
        else:
            missing.append(key)
    tokenized: list[TokenizedText] = []
    if missing:
        rows, truncated = await asyncio.to_thread(encoder.tokenize_each, [k[0] for k in missing])
        tokenized = [TokenizedText(r, bool(f)) for r, f in zip(rows, truncated, strict=True)]
    return PreparedTexts(keys, found, missing, tokenized)


def submit_texts(runtime: Runtime, prepared: PreparedTexts) -> asyncio.Future[list[TextEmbedding]] | None:
    if not prepared.tokenized:
        return None
    return _submitted(lambda: runtime.text_batcher.submit_nowait(prepared.tokenized))


def finish_texts(runtime: Runtime, prepared: PreparedTexts, encoded: list[TextEmbedding]) -> list[TextEmbedding]:
    """Cache what was encoded and answer every text in its order."""
    found = dict(prepared.found)
    for key, emb in zip(prepared.missing, encoded, strict=True):
        runtime.text_cache.put(key, emb)
        found[key] = emb
    return [found[k] for k in prepared.keys]


def submit_pixels(runtime: Runtime, pixels: list[np.ndarray]) -> asyncio.Future[list[np.ndarray]] | None:
    if not pixels:
        return None
    return _submitted(lambda: runtime.image_batcher.submit_nowait(pixels))


def _submitted(submit: Any) -> Any:
    try:
        return asyncio.wrap_future(submit())
    except Overloaded:
        raise ApiError(429, "overloaded", "the server is busy: retry shortly", {"Retry-After": "1"}) from None
    except ShuttingDown:
        raise shutting_down() from None


async def gather_encoded(*futures: asyncio.Future[Any] | None) -> list[Any]:
    """Await the submitted encodings; a shutdown while waiting is a 503, not a 500."""
    try:
        return [await f if f is not None else [] for f in futures]
    except ShuttingDown:
        raise shutting_down() from None
    finally:
        for f in futures:
            if f is not None and not f.done():
                f.cancel()
