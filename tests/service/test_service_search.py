"""POST /search against the tiny model and the fixture indexes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from service_helpers import b64, draw_shape, png_bytes, read_items

from llm2clip.bundle import load_bundle
from llm2clip.encoders.onnx import bundle_tokenizer
from llm2clip.index import load_index

HIT_FIELDS = {"rank", "score", "id", "uri", "caption", "caption_key", "meta", "image_url"}


def expected_scores(index_path, query: np.ndarray) -> dict[tuple[str, str | None], float]:
    """(id, caption_key) -> cosine, computed with numpy from the stored vectors."""
    index = load_index(index_path)
    try:
        vectors = index.reconstruct_all()
        records = index.records(list(range(index.count)))
    finally:
        index.close()
    scores = vectors @ query
    return {(r.id, r.caption_key): float(s) for r, s in zip(records, scores, strict=True)}


def check_ranking(results, expected: dict, k: int) -> None:
    assert len(results) == k
    assert [r["rank"] for r in results] == list(range(1, k + 1))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # every hit carries its true cosine, and together they are the k best (ties may come in any order)
    for r in results:
        assert r["score"] == pytest.approx(expected[(r["id"], r["caption_key"])], abs=1e-5)
    best = sorted(expected.values(), reverse=True)[:k]
    np.testing.assert_allclose(scores, best, atol=1e-5)


def test_text_search_returns_k_ranked_image_hits(client, encoders, indexes, tiny_bundle, corpus):
    query = "a small red circle on a white background"
    r = client.post("/search", json={"text": query, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"results", "query", "took_ms", "model", "index_version"}
    assert body["model"] == load_bundle(tiny_bundle).fingerprint[:12]
    assert body["index_version"] == client.get("/readyz").json()["versions"]["image"]
    assert body["query"]["modality"] == "text" and body["query"]["target"] == "image"
    assert body["query"]["truncated"] is False
    assert body["query"]["tokens"] == len(encoders[1].tokenize_each([query])[0][0])
    want = encoders[1].encode([query])[0]
    check_ranking(body["results"], expected_scores(indexes[0], want), 5)
    items = {it["id"]: it for it in read_items(corpus)}
    for hit in body["results"]:
        assert set(hit) == HIT_FIELDS
        item = items[hit["id"]]
        assert hit["uri"] == item["image"]
        assert hit["caption"] == item["captions"]["long"]
        assert hit["meta"] == item["meta"]
        assert hit["image_url"] == f"/items/{item['image']}"


def test_text_search_of_a_caption_finds_it_in_the_text_index(client, corpus):
    item = read_items(corpus)[7]
    r = client.post("/search", json={"text": item["captions"]["long"], "k": 3, "target": "text"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["target"] == "text"
    top = body["results"][0]
    assert (top["id"], top["caption_key"]) == (item["id"], "long")
    assert top["score"] == pytest.approx(1.0, abs=1e-4)


def test_k_larger_than_the_index_returns_every_item(client):
    r = client.post("/search", json={"text": "anything", "k": 50})
    assert r.status_code == 200
    assert len(r.json()["results"]) == 12


def test_long_text_is_cut_and_says_so(client, tiny_bundle):
    max_tokens = load_bundle(tiny_bundle).max_tokens
    text = "  " + "red  word\n" * (max_tokens + 100)
    r = client.post("/search", json={"text": text, "k": 2})
    assert r.status_code == 200, r.text
    query = r.json()["query"]
    assert query["truncated"] is True and query["tokens"] == max_tokens
    # kept_chars counts characters of the text as sent (odd whitespace included): its head alone is not cut
    tokenizer = bundle_tokenizer(load_bundle(tiny_bundle))
    kept = query["kept_chars"]
    assert 0 < kept < len(text) and tokenizer.kept_chars(text[:kept]) is None
    assert tokenizer.count(text[:kept]) == max_tokens
    r = client.post("/search", json={"text": "red word", "k": 2})
    assert r.json()["query"]["truncated"] is False and r.json()["query"]["kept_chars"] is None


def test_image_upload_searches_captions(client, encoders, indexes):
    image = draw_shape("blue", "square")
    r = client.post("/search", files={"image": ("q.png", png_bytes(image), "image/png")}, data={"k": "4"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == {"modality": "image", "target": "text", "tokens": None, "truncated": False,
                             "kept_chars": None}
    want = encoders[0].encode([image])[0]
    check_ranking(body["results"], expected_scores(indexes[1], want), 4)
    assert all(hit["caption"] and hit["caption_key"] in ("long", "short") for hit in body["results"])


def test_image_base64_searches_captions_and_can_target_images(client, encoders, indexes):
    image = draw_shape("green", "triangle")
    data = png_bytes(image)
    r = client.post("/search", json={"image_base64": b64(data), "k": 6})
    assert r.status_code == 200, r.text
    want = encoders[0].encode([image])[0]
    check_ranking(r.json()["results"], expected_scores(indexes[1], want), 6)

    # a data: URL is what a browser's FileReader gives
    r = client.post("/search", json={"image_base64": "data:image/png;base64," + b64(data), "k": 3,
                                     "target": "image"})
    assert r.status_code == 200, r.text
    assert r.json()["query"]["target"] == "image"
    check_ranking(r.json()["results"], expected_scores(indexes[0], want), 3)


def test_jpeg_and_rgba_images_are_accepted(client):
    import io

    for mode, fmt in (("RGBA", "PNG"), ("L", "JPEG"), ("RGB", "WEBP")):
        buf = io.BytesIO()
        Image.new(mode, (40, 30)).save(buf, format=fmt)
        r = client.post("/search", files={"image": ("q", buf.getvalue(), "application/octet-stream")},
                        data={"k": "2"})
        assert r.status_code == 200, (mode, fmt, r.text)


def test_an_indexed_image_finds_itself_first(client, corpus, encoders):
    items = read_items(corpus)
    vectors = encoders[0].encode([Image.open(corpus / it["image"]) for it in items])
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    # the fixture's pretrained backbone tells the images apart; were they one vector, "itself first" is moot
    assert sims.max() < 0.9999
    for item in items[::4]:
        data = (corpus / item["image"]).read_bytes()
        r = client.post("/search", files={"image": ("q.png", data, "image/png")},
                        data={"target": "image", "k": "2"})
        assert r.status_code == 200, r.text
        top = r.json()["results"][0]
        assert top["id"] == item["id"] and top["score"] == pytest.approx(1.0, abs=1e-4)
