"""GET /items/...: item images from the corpus root, and nothing outside it."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from service.routes.items import resolve_item


@pytest.fixture(scope="module")
def escape_link(corpus):
    """images/escape.png inside the corpus, a symlink to ../secret.png outside it."""
    link = corpus / "images" / "escape.png"
    if not link.exists():
        os.symlink(corpus.parent / "secret.png", link)
    inner = corpus / "images" / "inner_link.png"
    if not inner.exists():
        os.symlink(corpus / "images" / "00_red_circle.png", inner)
    return link


def test_a_real_item_is_served_as_an_image(client, corpus):
    r = client.get("/items/images/00_red_circle.png")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.content == (corpus / "images" / "00_red_circle.png").read_bytes()


def test_image_urls_from_search_are_served(client):
    hits = client.post("/search", json={"text": "a yellow triangle", "k": 3}).json()["results"]
    for hit in hits:
        r = client.get(hit["image_url"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/")


@pytest.mark.parametrize("path", [
    "/items/%2e%2e/secret.png",
    "/items/images/%2e%2e/%2e%2e/secret.png",
    "/items/..%2fsecret.png",
    "/items/images/..%2F..%2Fsecret.png",
    "/items/%2fetc%2fpasswd",
    "/items/images/escape.png",
    "/items/items.jsonl",
    "/items/images/missing.png",
    "/items/images",
    "/items/",
    "/items/images/00_red_circle.png%00.txt",
])
def test_paths_leaving_the_root_or_not_images_are_404(client, escape_link, path):
    r = client.get(path)
    assert r.status_code == 404, path
    assert set(r.json()) == {"error"}
    assert b"\x89PNG" not in r.content


def test_absolute_path_is_404(client, corpus, escape_link):
    secret = corpus.parent / "secret.png"
    r = client.get("/items/" + str(secret))  # /items//<absolute path>/secret.png
    assert r.status_code == 404


def test_resolve_item_unit(corpus, escape_link):
    root = corpus.resolve()
    assert resolve_item(root, "images/00_red_circle.png") == root / "images" / "00_red_circle.png"
    assert resolve_item(root, "images/inner_link.png") == root / "images" / "00_red_circle.png"
    for bad in ["../secret.png", "images/../../secret.png", str(corpus.parent / "secret.png"),
                "images/escape.png", "items.jsonl", "images\\..\\..\\secret.png", "", "images/a\x00.png",
                "images/nope.png"]:
        assert resolve_item(root, bad) is None, bad
    # the secret really is there and readable: the refusals above are the code's, not the filesystem's
    assert Image.open(corpus.parent / "secret.png").size == (64, 64)


def test_no_corpus_root_means_no_items(make_settings, tmp_path):
    from fastapi.testclient import TestClient

    from llm2clip.errors import SettingError
    from service.app import create_app

    with pytest.raises(SettingError, match="LLM2CLIP_CORPUS_ROOT"):
        with TestClient(create_app(make_settings(corpus_root=tmp_path / "nowhere"))):
            pass
    with TestClient(create_app(make_settings(image_index=None, text_index=None))) as c:
        r = c.get("/items/images/00_red_circle.png")
        assert r.status_code == 404 and "corpus root" in r.json()["error"]["message"]
