"""Every refused request answers its 4xx with the error body, and the service keeps serving after it."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from service_helpers import assert_error, b64, draw_shape, noise_png, png_bytes, png_claiming

from service.app import create_app

PNG = png_bytes(draw_shape("red", "circle"))


def image_file(data: bytes, name: str = "q.png") -> dict:
    return {"image": (name, data, "image/png")}


BAD_SEARCHES = {
    "empty text": ({"json": {"text": "   "}}, 422, "invalid_request", "text"),
    "text over the limit": ({"json": {"text": "a" * 8001}}, 413, "text_too_long", "8000"),
    "k zero": ({"json": {"text": "x", "k": 0}}, 422, "invalid_request", "k"),
    "k negative": ({"json": {"text": "x", "k": -3}}, 422, "invalid_request", "k"),
    "k above max_k": ({"json": {"text": "x", "k": 101}}, 422, "invalid_request", "100"),
    "k not a number": ({"json": {"text": "x", "k": "many"}}, 422, "invalid_request", "k"),
    "k fractional": ({"json": {"text": "x", "k": 2.5}}, 422, "invalid_request", "k"),
    "unknown target": ({"json": {"text": "x", "target": "video"}}, 422, "invalid_request", "target"),
    "unknown field": ({"json": {"text": "x", "kk": 3}}, 422, "invalid_request", "kk"),
    "no query": ({"json": {"k": 3}}, 422, "invalid_request", "text or an image"),
    "text and image": ({"json": {"text": "x", "image_base64": b64(PNG)}}, 422, "invalid_request", "not both"),
    "not an object": ({"json": [1, 2]}, 422, "invalid_request", None),
    "bad base64": ({"json": {"image_base64": "not base64!!"}}, 400, "invalid_base64", "base64"),
    "base64 of a non-image": ({"json": {"image_base64": b64(b"hello world")}}, 400, "invalid_image",
                              "could not decode the image"),
    "undecodable upload": ({"files": image_file(b"\x89PNG\r\n\x1a\n garbage")}, 400, "invalid_image",
                           "could not decode the image"),
    "truncated png": ({"files": image_file(PNG[: len(PNG) // 2])}, 400, "invalid_image", "could not decode"),
    "empty upload": ({"files": image_file(b"")}, 400, "invalid_image", "empty"),
    "bomb far over the pixel limit": ({"files": image_file(png_claiming(100_000, 100_000))}, 413,
                                      "image_too_large", "pixels"),
    "bomb just over the pixel limit": ({"files": image_file(png_claiming(8000, 6000))}, 413,
                                       "image_too_large", "8000x6000"),
    "bomb in base64": ({"json": {"image_base64": b64(png_claiming(100_000, 100_000))}}, 413,
                       "image_too_large", None),
    "upload and text": ({"files": image_file(PNG), "data": {"text": "x"}}, 422, "invalid_request",
                        "not both"),
    "image as a plain field": ({"files": {"image": (None, "abc")}}, 422, "invalid_request", "file upload"),
    "unexpected file field": ({"files": {"photo": ("q.png", PNG, "image/png")}}, 422, "invalid_request",
                              "photo"),
    "k in a form": ({"files": image_file(PNG), "data": {"k": "0"}}, 422, "invalid_request", "k"),
    "plain text body": ({"content": b"red circle", "headers": {"content-type": "text/plain"}}, 415,
                        "unsupported_media_type", "application/json"),
    "form-encoded body": ({"data": {"text": "x"}}, 415, "unsupported_media_type", None),
    "no content type": ({"content": b'{"text": "x"}'}, 415, "unsupported_media_type", None),
    "invalid json": ({"content": b'{"text": ', "headers": {"content-type": "application/json"}}, 400,
                     "invalid_json", "JSON"),
}


@pytest.mark.parametrize("case", list(BAD_SEARCHES), ids=list(BAD_SEARCHES))
def test_bad_search_is_refused_and_the_service_goes_on(client, case):
    kwargs, status, code, fragment = BAD_SEARCHES[case]
    error = assert_error(client.post("/search", **kwargs), status, code)
    if fragment is not None:
        assert fragment in error["message"]
    assert client.post("/search", json={"text": "red circle", "k": 2}).status_code == 200


def test_validation_message_is_short_and_does_not_echo_the_input(client):
    huge = "z" * 100_000
    error = assert_error(client.post("/search", json={"text": "x", "k": huge}), 422, "invalid_request")
    assert "zzzz" not in error["message"] and len(error["message"]) < 300


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nope", 404), ("GET", "/search", 405),
                                                        ("DELETE", "/embed", 405)])
def test_unknown_routes_and_methods_use_the_error_body(client, method, path, status):
    assert_error(client.request(method, path), status)


def test_limits_from_settings(app_client):
    c = app_client(max_image_bytes=4096, max_image_pixels=5000, max_k=5, max_text_chars=50)
    big = noise_png(64)
    assert len(big) > 4096
    assert_error(c.post("/search", files=image_file(big)), 413, "image_too_large")
    assert_error(c.post("/search", json={"image_base64": b64(big)}), 413, "image_too_large")
    over = png_bytes(draw_shape("red", "circle", side=80))  # 6400 pixels
    assert len(over) < 4096
    error = assert_error(c.post("/search", files=image_file(over)), 413, "image_too_large")
    assert "80x80" in error["message"]
    error = assert_error(c.post("/search", json={"text": "x", "k": 6}), 422, "invalid_request")
    assert error["message"] == "k: Input should be less than or equal to 5"
    assert_error(c.post("/search", json={"text": "x" * 51}), 413, "text_too_long")
    # within every limit: served
    r = c.post("/search", files=image_file(png_bytes(draw_shape("red", "circle", side=64))), data={"k": "5"})
    assert r.status_code == 200 and len(r.json()["results"]) == 5


def test_request_body_limit_with_content_length_and_streamed(app_client):
    c = app_client(max_request_bytes=2048)
    assert_error(c.post("/search", json={"text": "y" * 3000}), 413, "payload_too_large")

    def chunks():
        for _ in range(10):
            yield b"x" * 512

    # a generator body goes out chunked, without Content-Length: the limit must hold while reading
    r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "payload_too_large")
    assert c.post("/search", json={"text": "y" * 100}).status_code == 200
    metrics = c.get("/metrics").text
    assert 'llm2clip_http_requests_total{method="POST",route="/search",status="413"} 2.0' in metrics
    assert 'llm2clip_rejected_requests_total{reason="payload_too_large"} 2.0' in metrics


def test_missing_index_names_the_setting(make_settings):
    from fastapi.testclient import TestClient

    with TestClient(create_app(make_settings(text_index=None))) as c:
        error = assert_error(c.post("/search", files=image_file(PNG)), 503, "index_not_loaded")
        assert "LLM2CLIP_TEXT_INDEX" in error["message"]
        error = assert_error(c.post("/search", json={"text": "x", "target": "text"}), 503, "index_not_loaded")
        assert error["message"] == "no text index is loaded: set LLM2CLIP_TEXT_INDEX and restart the service"
        assert c.post("/search", json={"text": "x"}).status_code == 200
        assert c.post("/search", files=image_file(PNG), data={"target": "image"}).status_code == 200
        assert c.get("/readyz").json()["indexes"] == {"image": 12, "text": None}


def test_internal_error_is_generic_and_logged(client, monkeypatch, caplog):
    encoder = client.app.state.service.runtime.resources.text_encoder

    def boom(batch):
        raise RuntimeError("secret /internal/path")

    monkeypatch.setattr(encoder, "encode_tokens", boom)
    with caplog.at_level(logging.ERROR):
        # a text no other test sends: a cached one would never reach the encoder
        r = client.post("/search", json={"text": "red circle, internal error test"})
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal", "message": "internal error",
                                  "request_id": r.headers["x-request-id"]}}
    assert "secret" not in r.text and "internal/path" not in r.text
    assert "secret /internal/path" in caplog.text  # the operator still sees it
    monkeypatch.undo()
    assert client.post("/search", json={"text": "red circle"}).status_code == 200


def test_full_queue_answers_429(app_client, shared_resources, monkeypatch):
    encoder = shared_resources.text_encoder
    started, release = threading.Event(), threading.Event()
    original = encoder.encode_tokens

    def slow(batch):
        started.set()
        release.wait(20)
        return original(batch)

    c = app_client(batch={"queue_size": 1, "wait_ms": 0})
    monkeypatch.setattr(encoder, "encode_tokens", slow)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(c.post, "/search", json={"text": "first"})
        try:
            assert started.wait(20)
            r = c.post("/search", json={"text": "second"})
            assert_error(r, 429, "overloaded")
            assert r.headers["retry-after"] == "1"
            # the image encoder has its own queue
            assert c.post("/search", files=image_file(PNG)).status_code == 200
        finally:
            release.set()
        assert first.result(20).status_code == 200
    assert c.post("/search", json={"text": "third"}).status_code == 200
    assert 'llm2clip_rejected_requests_total{reason="overloaded"} 1.0' in c.get("/metrics").text


def test_announced_oversized_body_is_refused_unread():
    import asyncio

    from starlette.exceptions import HTTPException

    from service.app import BodyLimitMiddleware

    async def never_called():
        raise AssertionError("the body was read")

    async def handler(scope, receive, send):
        await receive()

    app = BodyLimitMiddleware(handler, max_bytes=1000)
    scope = {"type": "http", "method": "POST", "path": "/search", "headers": [(b"content-length", b"5000")]}
    with pytest.raises(HTTPException) as info:
        asyncio.run(app(scope, never_called, None))
    assert info.value.status_code == 413
