"""POST /embed: the service's embeddings are the encoders' embeddings."""

from __future__ import annotations

import numpy as np
from service_helpers import assert_error, b64, draw_shape, png_bytes

from llm2clip.bundle import load_bundle

TEXTS = ["a red circle", "a long caption " * 40, "blue square, top left"]
IMAGES = [draw_shape("red", "circle"), draw_shape("yellow", "triangle", side=90)]


def check_unit(vectors: list[list[float]], dim: int) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    assert arr.shape[1] == dim
    np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)
    return arr


def test_embed_json_matches_the_encoders(client, encoders, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    r = client.post("/embed", json={"texts": TEXTS, "images_base64": [b64(png_bytes(im)) for im in IMAGES]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == bundle.embed_dim == 32
    assert body["model"] == bundle.fingerprint
    assert body["text_truncated"] == [False, False, False]
    texts = check_unit(body["text_embeddings"], 32)
    images = check_unit(body["image_embeddings"], 32)
    np.testing.assert_allclose(texts, encoders[1].encode(TEXTS), atol=1e-5)
    np.testing.assert_allclose(images, encoders[0].encode(IMAGES), atol=1e-5)


def test_embed_multipart_images_and_texts_keep_their_order(client, encoders):
    files = [("images", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(IMAGES[::-1])]
    r = client.post("/embed", files=files, data={"texts": TEXTS[:2]})
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_allclose(body["image_embeddings"], encoders[0].encode(IMAGES[::-1]), atol=1e-5)
    np.testing.assert_allclose(body["text_embeddings"], encoders[1].encode(TEXTS[:2]), atol=1e-5)


def test_embed_texts_only_and_images_only(client):
    r = client.post("/embed", json={"texts": ["one"]})
    assert r.status_code == 200
    assert len(r.json()["text_embeddings"]) == 1 and r.json()["image_embeddings"] == []
    r = client.post("/embed", files=[("images", ("a.png", png_bytes(IMAGES[0]), "image/png"))])
    assert r.status_code == 200
    assert len(r.json()["image_embeddings"]) == 1 and r.json()["text_embeddings"] == []


def test_embed_refusals(client, app_client):
    assert_error(client.post("/embed", json={}), 422, "invalid_request")
    assert "texts[1]" in assert_error(client.post("/embed", json={"texts": ["ok", ""]}), 422)["message"]
    assert_error(client.post("/embed", json={"texts": ["ok", "x" * 8001]}), 413, "text_too_long")
    assert "images_base64[0]" in assert_error(
        client.post("/embed", json={"images_base64": ["%%%"]}), 400, "invalid_base64")["message"]
    assert_error(client.post("/embed", json={"texts": "not a list"}), 422, "invalid_request")
    assert_error(client.post("/embed", content=b"x", headers={"content-type": "image/png"}), 415)
    small = app_client(max_batch=2)
    assert "at most 2" in assert_error(small.post("/embed", json={"texts": ["a", "b", "c"]}), 422)["message"]
    files = [("images", (f"{i}.png", png_bytes(IMAGES[0]), "image/png")) for i in range(3)]
    assert_error(small.post("/embed", files=files, data={"texts": ["a"]}), 422, "invalid_request")
    assert small.post("/embed", json={"texts": ["a", "b"]}).status_code == 200
    # the limit is per list, as the schema's maxItems says: two texts and two images are fine
    assert small.post("/embed", files=files[:2], data={"texts": ["a", "b"]}).status_code == 200
