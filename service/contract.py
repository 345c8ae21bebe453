"""The request bodies of /search and /embed as OpenAPI says them, built from the service's own limits.

The handlers read JSON and multipart bodies themselves (FastAPI cannot infer either/or bodies or repeated
form fields from a signature), so the schema is written here, once, and the handlers enforce exactly it:
a fuzzer's schema-valid data is accepted and its schema-invalid data refused (tests/service/
test_service_contract.py runs schemathesis against the app to keep it so). The one thing JSON Schema cannot
say is which bytes decode as an image: a schema-valid image that does not is a 400 ``invalid_image``.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

from service.settings import Settings

# a multipart text field that looks like a JSON object or array is refused (422): it is almost always a JSON
# body sent as a form field, and the schema says so with this pattern (ECMA-262 and Python read it alike)
JSON_CONTAINER = r"^\s*(\{[\s\S]*\}|\[[\s\S]*\])\s*$"
JSON_CONTAINER_RE = re.compile(JSON_CONTAINER)
IMAGE_TYPES = "image/png, image/jpeg, image/webp, image/gif, image/bmp, image/tiff"
EXAMPLE_TEXT = "a red circle in the middle of a plain white square"
# a 1x1 black PNG
EXAMPLE_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="


def base64_max_chars(settings: Settings) -> int:
    """Longest base64 image string accepted (longer is a 413 before decoding): 4 characters per 3 bytes, plus
    room for line breaks and a data: URL prefix."""
    return (settings.max_image_bytes + 2) // 3 * 4 + 1024


def _text(settings: Settings, what: str, form: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "string", "minLength": 1, "maxLength": settings.max_text_chars, "pattern": r"\S",
        "description": f"{what}: at least one non-whitespace character, at most {settings.max_text_chars} "
                       "(413 above); long captions are fine (cut at the model's max tokens).",
    }
    if form:
        schema["not"] = {"pattern": JSON_CONTAINER}
        schema["description"] += (" A form field that looks like a JSON object or array ({...} or [...]) is "
                                  "refused: send JSON bodies as application/json.")
    return schema


def _image_base64(settings: Settings) -> dict[str, Any]:
    return {
        "type": "string", "minLength": 1, "maxLength": base64_max_chars(settings),
        "contentEncoding": "base64", "contentMediaType": "image/*",
        "description": f"An image file, base64 (a data: URL prefix is accepted): PNG, JPEG, WebP, GIF, BMP or "
                       f"TIFF, at most {settings.max_image_bytes} bytes and {settings.max_image_pixels} pixels "
                       "(413 above). Bytes that are not base64 or not a decodable image: 400.",
    }


def _image_file(settings: Settings) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "minLength": 1,
            "description": f"An image file: PNG, JPEG, WebP, GIF, BMP or TIFF, at most {settings.max_image_bytes} "
                           f"bytes and {settings.max_image_pixels} pixels (413 above); 400 if it does not decode."}


def _k(settings: Settings) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": settings.max_k, "default": 10,
            "description": f"Number of results, 1 to {settings.max_k}."}


TARGET = {"type": "string", "enum": ["image", "text"],
          "description": "Index to search. Default: a text query searches images, an image query captions."}


def _list(item: dict[str, Any], settings: Settings, what: str) -> dict[str, Any]:
    return {"type": "array", "items": item, "maxItems": settings.max_batch,
            "description": f"{what}: at most {settings.max_batch} (422 above)."}


def _either(first: str, second: str, lists: bool = False) -> list[dict[str, Any]]:
    """Exactly one of two properties present, or (lists) at least one non-empty."""
    if not lists:
        return [{"required": [first]}, {"required": [second]}]
    return [{"required": [name], "properties": {name: {"minItems": 1}}} for name in (first, second)]


def search_body(settings: Settings) -> dict[str, Any]:
    """POST /search: JSON with exactly one of ``text`` / ``image_base64``, or a form with ``text`` or ``image``."""
    json_schema = {
        "type": "object", "additionalProperties": False, "oneOf": _either("text", "image_base64"),
        "properties": {"text": _text(settings, "Query text"), "image_base64": _image_base64(settings),
                       "k": _k(settings), "target": TARGET},
    }
    form_schema = {
        "type": "object", "additionalProperties": False, "oneOf": _either("text", "image"),
        "properties": {"text": _text(settings, "Query text", form=True), "image": _image_file(settings),
                       "k": _k(settings), "target": TARGET},
    }
    return {"required": True, "content": {
        "application/json": {"schema": json_schema, "examples": {
            "text": {"summary": "a text query (searches images)", "value": {"text": EXAMPLE_TEXT, "k": 5}},
            "image": {"summary": "an image query (searches captions)",
                      "value": {"image_base64": EXAMPLE_PNG, "k": 5, "target": "text"}},
        }},
        "multipart/form-data": {"schema": form_schema, "encoding": {"image": {"contentType": IMAGE_TYPES}},
                                "examples": {"text": {"summary": "a text query as a form field",
                                                      "value": {"text": EXAMPLE_TEXT, "k": 5}}}},
    }}


def embed_body(settings: Settings) -> dict[str, Any]:
    """POST /embed: JSON ``texts`` and/or ``images_base64``, or repeated form ``texts`` fields / ``images``
    files; at least one item."""
    json_schema = {
        "type": "object", "additionalProperties": False, "anyOf": _either("texts", "images_base64", lists=True),
        "properties": {"texts": _list(_text(settings, "A text"), settings, "Texts to embed"),
                       "images_base64": _list(_image_base64(settings), settings, "Images to embed, base64")},
    }
    form_text = _text(settings, "A text", form=True)
    form_schema = {
        "type": "object", "additionalProperties": False, "anyOf": _either("texts", "images", lists=True),
        "properties": {
            # one `texts` field reads as a list of one
            "texts": {"anyOf": [form_text, _list(form_text, settings, "Texts to embed (repeat the field)")]},
            "images": _list(_image_file(settings), settings, "Image files (repeat the field)"),
        },
    }
    return {"required": True, "content": {
        "application/json": {"schema": json_schema, "examples": {
            "texts": {"summary": "two texts", "value": {"texts": [EXAMPLE_TEXT, "a blue square"]}},
            "both": {"summary": "a text and an image",
                     "value": {"texts": [EXAMPLE_TEXT], "images_base64": [EXAMPLE_PNG]}},
        }},
        "multipart/form-data": {"schema": form_schema, "encoding": {"images": {"contentType": IMAGE_TYPES}},
                                "examples": {"texts": {"summary": "texts as repeated form fields",
                                                       "value": {"texts": [EXAMPLE_TEXT, "a blue square"]}}}},
    }}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """``app.openapi()`` (FastAPI's, cached) with the request bodies of /search and /embed built from
    ``settings``."""
    generate = app.openapi
    done: list[bool] = []

    def openapi() -> dict[str, Any]:
        spec = generate()
        if not done:
            paths = spec.get("paths", {})
            for path, body in (("/search", search_body), ("/embed", embed_body)):
                if "post" in paths.get(path, {}):
                    paths[path]["post"]["requestBody"] = body(settings)
            _item_example(app, paths.get("/items/{path}", {}).get("get"))
            done.append(True)
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _item_example(app: FastAPI, operation: dict[str, Any] | None) -> None:
    """An item image this service really serves as the example of GET /items/{path}: the docs then show a
    path that works, and a contract run gets a 200 from it, not only 404s."""
    from service.routes.items import resolve_item

    state = getattr(app.state, "service", None)
    runtime = getattr(state, "runtime", None)
    if operation is None or runtime is None or runtime.resources.corpus_root is None:
        return
    with runtime.resources.indexes.lease("image") as served:
        if served is None or not served.bundle.count:
            return
        uri = served.bundle.records([0])[0].uri
    if uri and resolve_item(runtime.resources.corpus_root, str(uri)) is not None:
        for parameter in operation.get("parameters", []):
            if parameter.get("name") == "path":
                parameter["example"] = str(uri)
