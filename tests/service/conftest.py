"""Service fixtures: a 12-image corpus of coloured shapes, an image index and a caption index built with
the tiny model bundle's ONNX encoders, and a running app (TestClient runs its lifespan)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import COLOURS, SHAPES, draw_shape, read_items

from llm2clip.bundle import load_bundle
from llm2clip.encoders import load_onnx_encoders
from llm2clip.index import IndexWriter, Record
from service.app import create_app
from service.settings import Settings
from service.state import load_resources


@pytest.fixture(scope="session", autouse=True)
def _no_llm2clip_env():
    """Settings read LLM2CLIP_* variables: the developer's own must not change what a test sees."""
    import os

    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("LLM2CLIP_"):
                mp.delenv(name)
        yield


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """items.jsonl + images/ (12 PNGs); a `secret.png` sits next to the corpus folder, outside it."""
    base = tmp_path_factory.mktemp("service")
    root = base / "corpus"
    (root / "images").mkdir(parents=True)
    draw_shape("red", "circle").save(base / "secret.png")
    lines = []
    for n, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        rel = f"images/{n:02d}_{colour}_{shape}.png"
        draw_shape(colour, shape).save(root / rel)
        lines.append({
            "id": f"item{n:02d}",
            "image": rel,
            "captions": {
                "long": f"A {colour} {shape} drawn in the middle of a plain off-white square canvas, filled "
                        f"with flat {colour} paint and no outline.",
                "short": f"{colour} {shape}",
            },
            "meta": {"colour": colour, "shape": shape},
        })
    (root / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


@pytest.fixture(scope="session")
def encoders(tiny_bundle):
    return load_onnx_encoders(tiny_bundle, threads=1)


def build_indexes(corpus: Path, out: Path, encoders, fingerprint: str) -> tuple[Path, Path]:
    image_encoder, text_encoder = encoders
    items = read_items(corpus)
    images = [Image.open(corpus / it["image"]) for it in items]
    writer = IndexWriter(out / "image_index", "image", image_encoder.dim, fingerprint)
    writer.add(image_encoder.encode(images), [
        Record(id=it["id"], uri=it["image"], caption=it["captions"]["long"], caption_key="long",
               meta=it["meta"])
        for it in items
    ])
    writer.write(build={"corpus_root": str(corpus)})
    rows = [(it, key) for it in items for key in ("long", "short")]
    writer = IndexWriter(out / "text_index", "text", text_encoder.dim, fingerprint)
    writer.add(text_encoder.encode([it["captions"][key] for it, key in rows]), [
        Record(id=it["id"], uri=it["image"], caption=it["captions"][key], caption_key=key, meta=it["meta"])
        for it, key in rows
    ])
    writer.write(build={"corpus_root": str(corpus)})
    return out / "image_index", out / "text_index"


@pytest.fixture(scope="session")
def indexes(tmp_path_factory, corpus, encoders, tiny_bundle) -> tuple[Path, Path]:
    """(image index, text index) built with the tiny model."""
    fingerprint = load_bundle(tiny_bundle).fingerprint
    return build_indexes(corpus, tmp_path_factory.mktemp("indexes"), encoders, fingerprint)


@pytest.fixture(scope="session")
def make_settings(tiny_bundle, indexes):
    def make(**overrides) -> Settings:
        values = {"model": tiny_bundle, "image_index": indexes[0], "text_index": indexes[1], "threads": 1}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def shared_resources(make_settings):
    """Loaded once, handed to the apps that only differ in their limits (the app does not close them)."""
    resources = load_resources(make_settings())
    yield resources
    resources.close()


@pytest.fixture(scope="session")
def client(make_settings):
    """The app with default limits, loading its own bundles in the lifespan (the production path)."""
    with TestClient(create_app(make_settings())) as c:
        yield c


@pytest.fixture
def app_client(make_settings, shared_resources):
    """A factory of apps with other settings, sharing the loaded model and indexes."""
    clients = []

    def make(**overrides) -> TestClient:
        c = TestClient(create_app(make_settings(**overrides), resources=shared_resources))
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in reversed(clients):
        c.__exit__(None, None, None)
