"""The real app over real HTTP: `llm2clip serve` in a subprocess with the small trained bundle."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
import pytest

from llm2clip.data import read_dataset

# the session fixture trains and exports a real bundle (minutes)
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained):
    port = _free_port()
    idx = trained["indexes"]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm2clip_cli.main", "serve", "--model", str(trained["bundle"]),
         "--image-index", str(idx / "image"), "--text-index", str(idx / "text"), "--port", str(port),
         "--threads", "1", "--log-level", "warning"],
        # a file, not a pipe: the access log writes a line a request and would block on a full pipe
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError("server exited: " + log.read().decode(errors="replace"))
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server not ready after 120 s")
            time.sleep(0.5)
        with httpx.Client(base_url=base, timeout=60) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def dataset(trained):
    return read_dataset(trained["data"])


def test_long_caption_finds_its_scene(server, dataset):
    hits = []
    for item in dataset.items[:12]:
        r = server.post("/search", json={"text": item.long, "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["query"]["modality"] == "text" and body["query"]["target"] == "image"
        assert not body["query"]["truncated"]
        scores = [h["score"] for h in body["results"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 5
        hits.append(item.id in [h["id"] for h in body["results"]])
    # trained on these 48 scenes: at least half the long captions rank their own scene in the top 5, as
    # eval's R@5 >= 0.5 asks (chance is 5/48; 6 or more of 12 by chance has probability ~5e-4)
    assert sum(hits) >= 6, hits


def test_image_finds_its_caption(server, dataset):
    hits = []
    for item in dataset.items[:12]:
        png = dataset.image_path(item).read_bytes()
        r = server.post("/search", files={"image": ("scene.png", png, "image/png")}, data={"k": "5"})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert all(h["caption"] for h in results)
        hits.append(item.long in [h["caption"] for h in results])
    assert sum(hits) >= 6, hits


def test_base64_image_and_embed_agree_with_search(server, dataset):
    item = dataset.items[0]
    b64 = base64.b64encode(dataset.image_path(item).read_bytes()).decode()
    emb = server.post("/embed", json={"texts": [item.long], "images_base64": [b64]})
    assert emb.status_code == 200, emb.text
    body = emb.json()
    t, i = np.array(body["text_embeddings"][0]), np.array(body["image_embeddings"][0])
    assert len(t) == body["dim"] == 128
    assert abs(np.linalg.norm(t) - 1) < 1e-4 and abs(np.linalg.norm(i) - 1) < 1e-4
    r = server.post("/search", json={"image_base64": b64, "k": 48, "target": "image"}).json()
    own = next(h for h in r["results"] if h["id"] == item.id)
    assert own["score"] == pytest.approx(1.0, abs=1e-4)  # the image itself, through the image index
    r = server.post("/search", json={"text": item.long, "k": 48}).json()
    own = next(h for h in r["results"] if h["id"] == item.id)
    assert own["score"] == pytest.approx(float(t @ i), abs=1e-4)


def test_bad_inputs_do_not_stop_the_server(server):
    assert server.post("/search", json={"text": "", "k": 5}).status_code == 422
    assert server.post("/search", json={"text": "x", "k": 0}).status_code == 422
    r = server.post("/search", files={"image": ("x.png", b"not an image", "image/png")})
    assert r.status_code == 400 and r.json()["error"]["code"]
    assert server.post("/search", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert server.get("/items/../../etc/passwd").status_code == 404
    assert server.post("/search", json={"text": "a red bag", "k": 3}).status_code == 200
    metrics = server.get("/metrics").text
    assert 'llm2clip_http_requests_total{method="POST",route="/search",status="422"}' in metrics
    assert "llm2clip_encode_seconds_bucket" in metrics


def test_the_service_serves_the_variant_the_machine_and_the_checks_allow(server, trained):
    """The precision in /metrics is the one the bundle's checks and this machine's probe choose; a variant
    other than fp32 is served only when its check against fp32 passed."""
    from llm2clip.bundle import load_bundle
    from llm2clip.encoders import choose_text_precision

    bundle = load_bundle(trained["bundle"])
    assert set(bundle.text_variants) == {"fp32", "int8", "bf16"}
    expected = choose_text_precision(bundle)
    info = [line for line in server.get("/metrics").text.splitlines() if line.startswith("llm2clip_model_info{")]
    assert len(info) == 1 and f'precision="{expected}"' in info[0], info
    if expected != "fp32":
        assert bundle.text_variants[expected]["check"]["passed"]
