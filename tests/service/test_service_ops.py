"""Health, readiness, metrics, info, the page and the OpenAPI text."""

from __future__ import annotations

import hashlib

from prometheus_client.parser import text_string_to_metric_families
from service_helpers import draw_shape, png_bytes

from llm2clip.bundle import load_bundle


def samples(client) -> dict[tuple[str, frozenset], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(snapshot, name: str, **labels) -> float:
    return snapshot.get((name, frozenset(labels.items())), 0.0)


def test_healthz_and_readyz(client, tiny_bundle, indexes):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    # the version of an index is a short hash of its manifest.json
    versions = {m: hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()[:12]
                for m, path in zip(("image", "text"), indexes, strict=True)}
    flat = {"factory": "Flat", "search_params": {}, "recall_at_10": 1.0, "target_recall": 0.95, "device": "cpu",
            "mmap": False}
    assert r.json() == {"status": "ready", "model": load_bundle(tiny_bundle).fingerprint[:12],
                        "indexes": {"image": 12, "text": 24}, "versions": versions,
                        "search": {"image": flat, "text": flat}}


def test_an_ivf_index_served_memory_mapped(make_settings, indexes, tmp_path, client):
    """LLM2CLIP_INDEX_MMAP maps an IVF index's lists from disk: the same answers as the index read into
    memory, and /readyz says which it is."""
    from fastapi.testclient import TestClient

    from llm2clip.index import IndexWriter, load_index
    from service.app import create_app

    text = load_index(indexes[1])
    writer = IndexWriter(tmp_path / "ivf", "text", text.dim, text.model_fingerprint)
    writer.add(text.reconstruct_all(), text.records(list(range(text.count))))
    writer.write(build=text.manifest["build"], factory="IVF2,Flat")
    text.close()
    png = client.get("/items/" + client.post("/search", json={"text": "red circle"}).json()["results"][0]["uri"])
    answers = {}
    for mmap in (False, True):
        with TestClient(create_app(make_settings(text_index=tmp_path / "ivf", index_mmap=mmap))) as c:
            ready = c.get("/readyz").json()["search"]["text"]
            assert (ready["factory"], ready["mmap"]) == ("IVF2,Flat", mmap)
            assert ready["search_params"] == {"nprobe": 2}  # too few rows to hold queries out: the widest value
            r = c.post("/search", files={"image": ("q.png", png.content, "image/png")}, data={"k": "5"})
            answers[mmap] = [(h["id"], h["caption_key"], round(h["score"], 5)) for h in r.json()["results"]]
    assert answers[True] == answers[False] and len(answers[True]) == 5


def test_readyz_is_503_outside_the_lifespan(make_settings):
    from fastapi.testclient import TestClient

    from service.app import create_app

    c = TestClient(create_app(make_settings()))  # not entered: no lifespan, nothing loaded
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    assert c.get("/healthz").status_code == 200
    assert c.post("/search", json={"text": "x"}).status_code == 503


def test_metrics_count_requests_stages_and_rejections(client):
    before = samples(client)
    # a text no other test sends, so that it misses the query cache and reaches the encoder
    r = client.post("/search", json={"text": "red circle, metrics test", "k": 3})
    assert r.status_code == 200
    query = png_bytes(draw_shape("red", "square"))
    assert client.post("/search", files={"image": ("q.png", query, "image/png")}).status_code == 200
    assert client.post("/search", json={"text": "x", "k": 0}).status_code == 422
    assert client.get("/items/images/01_red_square.png").status_code == 200
    assert client.get("/items/images/nope.png").status_code == 404
    after = samples(client)

    def grew(name, by=1.0, **labels):
        assert value(after, name, **labels) - value(before, name, **labels) == by, (name, labels)

    grew("llm2clip_http_requests_total", route="/search", method="POST", status="200", by=2.0)
    grew("llm2clip_http_requests_total", route="/search", method="POST", status="422")
    # the route template, not the raw path: one series for every item
    grew("llm2clip_http_requests_total", route="/items/{path:path}", method="GET", status="200")
    grew("llm2clip_http_requests_total", route="/items/{path:path}", method="GET", status="404")
    assert not any("01_red_square" in str(labels) for _, labels in after)
    grew("llm2clip_http_request_duration_seconds_count", route="/search", method="POST", by=3.0)
    grew("llm2clip_encode_seconds_count", modality="text")
    grew("llm2clip_encode_seconds_count", modality="image")
    grew("llm2clip_encode_batch_size_count", modality="text")
    grew("llm2clip_encoded_tokens_total", by=float(r.json()["query"]["tokens"]))
    grew("llm2clip_query_cache_lookups_total", result="miss")
    grew("llm2clip_search_seconds_count", index="image")
    grew("llm2clip_search_seconds_count", index="text")
    grew("llm2clip_rejected_requests_total", reason="invalid_request")
    grew("llm2clip_rejected_requests_total", reason="not_found")
    assert value(after, "llm2clip_index_items", index="image") == 12
    assert value(after, "llm2clip_index_items", index="text") == 24
    assert value(after, "llm2clip_queue_depth", modality="text") == 0


def test_metrics_the_alerts_read(app_client, tiny_bundle, make_settings):
    # deploy/prometheus/rules.yml pages on these: readiness, the queue's bound, which model built each index
    model = load_bundle(tiny_bundle).fingerprint[:12]
    c = app_client(batch={"max_queue_tokens": 5000})
    snap = samples(c)
    assert value(snap, "llm2clip_ready") == 1.0
    assert value(snap, "llm2clip_queue_tokens_limit") == 5000.0
    versions = c.get("/readyz").json()["versions"]
    for index in ("image", "text"):
        info = {labels: v for (name, labels), v in snap.items() if name == "llm2clip_index_info"
                and dict(labels)["index"] == index}
        assert info == {frozenset({"index": index, "model_fingerprint": model,
                                   "version": versions[index]}.items()): 1.0}
        for result in ("ok", "refused"):  # present before any reload: alerts read 0, not nothing
            assert snap[("llm2clip_index_reloads_total", frozenset({"index": index, "result": result}.items()))] == 0


def test_ready_metric_follows_the_lifespan(make_settings):
    from fastapi.testclient import TestClient
    from prometheus_client import generate_latest

    from service.app import create_app

    app = create_app(make_settings())

    def ready() -> float:
        text = generate_latest(app.state.metrics.registry).decode()
        return float(next(x for x in text.splitlines() if x.startswith("llm2clip_ready ")).split()[1])

    assert ready() == 0.0  # created, nothing loaded yet
    with TestClient(app) as c:
        assert value(samples(c), "llm2clip_ready") == 1.0
    assert ready() == 0.0  # shut down: the same registry says not ready


def test_two_apps_have_their_own_registries(app_client):
    a, b = app_client(), app_client()
    a.post("/search", json={"text": "x"})
    assert 'route="/search"' in a.get("/metrics").text
    assert 'route="/search"' not in b.get("/metrics").text


def test_info(client):
    info = client.get("/info").json()
    assert info["model"]["embed_dim"] == 32
    assert info["indexes"]["image"]["count"] == 12 and info["indexes"]["text"]["count"] == 24
    versions = client.get("/readyz").json()["versions"]
    assert {m: info["indexes"][m]["version"] for m in versions} == versions
    assert info["corpus_root"] is True
    assert info["limits"]["max_k"] == 100
    assert "/" not in str(info["indexes"])  # no server paths in a public answer


def test_search_page(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for needle in ("<textarea", 'type="file"', 'call("search"', "image_url"):
        assert needle in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN: works offline


def test_openapi_documents_both_bodies_and_the_docstrings(client):
    spec = client.get("/openapi.json").json()
    search = spec["paths"]["/search"]["post"]
    assert set(search["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert search["description"].startswith("Rank indexed items")
    assert "429" in search["responses"] and "413" in search["responses"]
    assert spec["paths"]["/embed"]["post"]["description"].startswith("Embed texts")
    assert "/items/{path}" in spec["paths"]
