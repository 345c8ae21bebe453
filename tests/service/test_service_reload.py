"""Zero-downtime index reload: new index versions published into the served paths are swapped in under
concurrent search load (by the watcher and by POST /admin/reload) without a failed request; broken and
mismatched versions are refused while the old keeps serving; the admin API's auth."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from reload_helpers import (
    AUTH,
    TOKEN,
    Published,
    SearchLoad,
    corpus_rows,
    no_manifest,
    publish_broken,
    serving,
    truncate_index,
    wait_until,
    write_version,
    wrong_sha,
)
from service_helpers import assert_error, stop_server

from llm2clip.bundle import load_bundle
from service.app import create_app
from service.indexes import IndexSet, load_checked
from service.settings import Settings

MODALITIES = ("image", "text")


@pytest.fixture(scope="module")
def rows(corpus, encoders):
    return corpus_rows(corpus, encoders)


@pytest.fixture(scope="module")
def fingerprint(tiny_bundle) -> str:
    return load_bundle(tiny_bundle).fingerprint


@pytest.fixture
def live(tmp_path, rows, fingerprint, corpus) -> tuple[dict[str, Path], dict[str, Published]]:
    """(the served paths, version 1 of each) in a folder of this test's own."""
    paths = {m: tmp_path / "indexes" / m for m in MODALITIES}
    return paths, {m: write_version(paths[m], m, rows, 1, fingerprint, corpus_root=str(corpus)) for m in MODALITIES}


@pytest.fixture
def make_app(make_settings, live):
    def make(**overrides):
        paths, _ = live
        values = {"image_index": paths["image"], "text_index": paths["text"], "admin_token": TOKEN,
                  "reload_interval_s": 0}
        return create_app(make_settings(**{**values, **overrides}))

    return make


def metric(text: str, name: str) -> dict[frozenset, float]:
    return {frozenset(s.labels.items()): s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name}


def reloads(base_or_client, index: str, result: str) -> float:
    text = (httpx.get(base_or_client + "/metrics").text if isinstance(base_or_client, str)
            else base_or_client.get("/metrics").text)
    return metric(text, "llm2clip_index_reloads_total")[frozenset({"index": index, "result": result}.items())]


def served(app, modality: str):
    return app.state.service.runtime.resources.indexes.served(modality)


def check_answers(load: SearchLoad, versions: dict[str, list[Published]]) -> None:
    """Every request answered 200, from one version of its index: its ids all belong to the version it names."""
    failed = [a for a in load.answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(load.answers)} failed, e.g. {failed[:3]}"
    by_version = {p.version: p for ps in versions.values() for p in ps}
    seen: Counter[tuple[str, str]] = Counter()
    for a in load.answers:
        published = by_version[a.version]
        assert published in versions[a.target], a
        assert set(a.ids) <= published.ids and len(a.ids) == min(load.k, published.count), a
        seen[(a.target, a.version)] += 1
    # the load ran across every swap: each version answered searches of its index
    for target, ps in versions.items():
        assert all(seen[(target, p.version)] > 0 for p in ps), seen


def check_served_metrics(base: str, now: dict[str, Published], fingerprint: str) -> None:
    text = httpx.get(base + "/metrics").text
    for m in MODALITIES:
        info = {k: v for k, v in metric(text, "llm2clip_index_info").items() if dict(k)["index"] == m}
        # exactly one series per index: the old version's is gone
        assert info == {frozenset({"index": m, "model_fingerprint": fingerprint[:12],
                                   "version": now[m].version}.items()): 1.0}
        assert metric(text, "llm2clip_index_items")[frozenset({"index": m}.items())] == now[m].count


def test_watcher_swaps_three_versions_under_search_load(make_app, live, rows, fingerprint):
    paths, first = live
    app = make_app(reload_interval_s=0.05)
    versions = {m: [first[m]] for m in MODALITIES}
    with serving(app) as base, SearchLoad(base) as load:
        load.wait_for(20)
        for tag in (2, 3, 4):
            old = {m: served(app, m) for m in MODALITIES}
            for m in MODALITIES:
                versions[m].append(write_version(paths[m], m, rows, tag, fingerprint))
            new = {m: versions[m][-1].version for m in MODALITIES}
            wait_until(lambda: httpx.get(base + "/readyz").json()["versions"] == new, f"version {tag}")  # noqa: B023
            load.wait_for(20)
            # the replaced bundles close once the requests holding them end
            wait_until(lambda: all(old[m].closed for m in MODALITIES), "the old bundles to close")  # noqa: B023
        info = httpx.get(base + "/info").json()["indexes"]
        assert {m: (info[m]["version"], info[m]["count"]) for m in MODALITIES} == \
               {m: (versions[m][-1].version, versions[m][-1].count) for m in MODALITIES}
        check_served_metrics(base, {m: versions[m][-1] for m in MODALITIES}, fingerprint)
        for m in MODALITIES:
            assert reloads(base, m, "ok") == 3 and reloads(base, m, "refused") == 0
        last = [served(app, m) for m in MODALITIES]
    check_answers(load, versions)
    assert all(s.closed for s in last)  # shutdown closes what serves last


def test_admin_reload_under_search_load(make_app, live, rows, fingerprint, tmp_path):
    paths, first = live
    app = make_app()
    with serving(app) as base, SearchLoad(base) as load:
        load.wait_for(20)
        assert httpx.get(base + "/items/images/00_red_circle.png").status_code == 200
        old = {m: served(app, m) for m in MODALITIES}
        # the watcher is off: a new version waits for the admin call; the corpus root stays as configured
        second = {m: write_version(paths[m], m, rows, 2, fingerprint, corpus_root=str(tmp_path / "elsewhere"))
                  for m in MODALITIES}
        load.wait_for(10)
        assert httpx.get(base + "/readyz").json()["versions"] == {m: first[m].version for m in MODALITIES}
        r = httpx.post(base + "/admin/reload", headers=AUTH, json={}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json() == {"indexes": {m: {"status": "loaded", "version": second[m].version,
                                            "count": second[m].count, "previous": first[m].version}
                                        for m in MODALITIES}}
        load.wait_for(20)
        wait_until(lambda: all(old[m].closed for m in MODALITIES), "the old bundles to close")
        check_served_metrics(base, second, fingerprint)
        assert httpx.get(base + "/items/images/00_red_circle.png").status_code == 200
        # asked again: nothing new
        r = httpx.post(base + "/admin/reload", headers=AUTH, json={"index": "text"})
        assert r.json() == {"indexes": {"text": {"status": "unchanged", "version": second["text"].version,
                                                 "count": second["text"].count, "previous": None}}}
    check_answers(load, {m: [first[m], second[m]] for m in MODALITIES})


def test_a_search_held_across_the_swap_finishes_on_the_old_bundle(make_app, live, rows, fingerprint):
    paths, first = live
    app = make_app()
    with serving(app) as base:
        old = served(app, "image")
        inside, go = threading.Event(), threading.Event()
        real_search = old.bundle.search

        def held_search(*args, **kwargs):
            inside.set()
            assert go.wait(30)
            return real_search(*args, **kwargs)

        old.bundle.search = held_search  # this bundle instance only: it stops mid-search until `go`
        answer: dict = {}
        request = threading.Thread(target=lambda: answer.update(
            r=httpx.post(base + "/search", json={"text": "a held query", "k": 4}, timeout=60)))
        request.start()
        assert inside.wait(30)
        second = write_version(paths["image"], "image", rows, 2, fingerprint)
        r = httpx.post(base + "/admin/reload", headers=AUTH, json={"index": "image"}, timeout=60)
        assert r.status_code == 200 and r.json()["indexes"]["image"]["version"] == second.version
        # new requests use the new version at once; the held one still holds the old, open
        r = httpx.post(base + "/search", json={"text": "a new query", "k": 4})
        assert r.status_code == 200 and r.json()["index_version"] == second.version
        assert {h["id"] for h in r.json()["results"]} <= second.ids
        assert not old.closed
        go.set()
        request.join(60)
        held = answer["r"]
        assert held.status_code == 200, held.text
        assert held.json()["index_version"] == first["image"].version
        assert {h["id"] for h in held.json()["results"]} <= first["image"].ids
        assert len(held.json()["results"]) == 4
        assert old.closed  # its last holder was the held request


BROKEN = {
    "truncated index.faiss": {"damage": truncate_index, "reason": "is corrupt: index.faiss does not match its sha256"},
    "manifest sha256 wrong": {"damage": wrong_sha, "reason": "is corrupt: index.faiss does not match its sha256"},
    "no manifest (half-written)": {"damage": no_manifest, "reason": "has no manifest.json"},
    "another model": {"fingerprint": "f" * 64, "reason": "was built with model bundle ffffffffffff"},
    "another dim": {"dim": 16, "reason": "has dim 16, the model 32"},
    "the other modality": {"modality": "text", "reason": "is a text index, but it was given as the image index"},
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_or_mismatched_version_is_refused_and_the_old_serves(case, make_app, live, rows, fingerprint):
    paths, first = live
    spec = BROKEN[case]
    with TestClient(make_app()) as c:
        old = served(c.app, "image")
        publish_broken(paths["image"], spec.get("modality", "image"), rows, spec.get("fingerprint", fingerprint),
                       spec.get("damage", lambda folder: None), dim=spec.get("dim"))
        r = c.post("/admin/reload", headers=AUTH)
        error = assert_error(r, 409, "reload_refused")
        assert spec["reason"] in error["message"], error
        assert f"still serving {first['image'].version}" in error["message"]
        assert f"text index version {first['text'].version} unchanged" in error["message"]
        assert reloads(c, "image", "refused") == 1 and reloads(c, "image", "ok") == 0
        r = c.post("/search", json={"text": "a red circle", "k": 3})
        assert r.status_code == 200 and r.json()["index_version"] == first["image"].version
        assert c.get("/readyz").json()["versions"]["image"] == first["image"].version
        assert served(c.app, "image") is old and not old.closed


def test_truncated_index_without_verification_is_refused_by_faiss(make_app, live, rows, fingerprint):
    paths, first = live
    with TestClient(make_app(verify_bundles=False)) as c:
        publish_broken(paths["image"], "image", rows, fingerprint, truncate_index)
        error = assert_error(c.post("/admin/reload", headers=AUTH, json={"index": "image"}), 409)
        assert "index.faiss cannot be read" in error["message"], error
        assert c.post("/search", json={"text": "x"}).json()["index_version"] == first["image"].version


def test_the_watcher_does_not_retry_a_refused_version(make_app, live, rows, fingerprint):
    paths, first = live
    with TestClient(make_app()) as c:
        reloader = c.app.state.service.runtime.reloader
        assert reloader.poll() == []  # nothing new
        bad = publish_broken(paths["image"], "image", rows, fingerprint, truncate_index)
        [outcome] = reloader.poll()
        assert (outcome.status, outcome.refused, outcome.version) == ("refused", bad, first["image"].version)
        # its stat no longer changes, and were it touched, its content is the version refused
        assert reloader.poll() == [] and reloader.poll() == []
        (paths["image"] / "manifest.json").touch()
        assert reloader.poll() == []
        assert reloads(c, "image", "refused") == 1
        # the admin call retries it on demand (and counts that refusal too)
        assert c.post("/admin/reload", headers=AUTH, json={"index": "image"}).status_code == 409
        assert reloads(c, "image", "refused") == 2
        # a good version published after a refused one is taken
        second = write_version(paths["image"], "image", rows, 2, fingerprint)
        [outcome] = reloader.poll()
        assert (outcome.status, outcome.version, outcome.previous) == ("loaded", second.version, first["image"].version)
        assert reloads(c, "image", "ok") == 1


def test_a_publish_caught_between_its_renames_is_no_refusal(make_app, live, rows, fingerprint):
    """The watcher that looks while the served folder is moved away (a publish's first rename) keeps serving,
    counts no refusal, and takes the version that then appears."""
    paths, first = live
    with TestClient(make_app()) as c:
        reloader = c.app.state.service.runtime.reloader
        aside = paths["text"].with_name("text-aside")
        paths["text"].rename(aside)
        assert reloader.poll() == [] and reloader.poll() == []
        assert reloads(c, "text", "refused") == 0
        assert c.post("/search", json={"text": "a red circle", "k": 3}).status_code == 200
        # asked on demand, a missing index is reported
        assert c.post("/admin/reload", headers=AUTH, json={"index": "text"}).status_code == 409
        aside.rename(paths["text"])
        second = write_version(paths["text"], "text", rows, 2, fingerprint)
        [outcome] = reloader.poll()
        assert (outcome.status, outcome.version, outcome.previous) == ("loaded", second.version, first["text"].version)


def test_admin_api_is_off_without_a_token(make_app):
    with TestClient(make_app(admin_token=None)) as c:
        error = assert_error(c.post("/admin/reload", headers=AUTH), 404, "not_found")
        assert "LLM2CLIP_ADMIN_TOKEN" in error["message"]
        assert_error(c.post("/admin/reload"), 404, "not_found")


def test_admin_api_needs_the_token(make_app, live):
    _, first = live
    with TestClient(make_app()) as c:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer \u00e9t\u00e9".encode()}):
            r = c.post("/admin/reload", headers=headers, json={"index": "image"})
            error = assert_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in error["message"] and "wrong" not in error["message"]
        # auth comes before the body is read: a bad body from a stranger is still a 401
        assert_error(c.post("/admin/reload", content=b"{", headers={"content-type": "application/json"}), 401)
        r = c.post("/admin/reload", headers=AUTH)
        assert r.status_code == 200
        assert r.json()["indexes"]["image"] == {"status": "unchanged", "version": first["image"].version,
                                               "count": first["image"].count, "previous": None}
        assert_error(c.post("/admin/reload", headers=AUTH, json={"index": "video"}), 422, "invalid_request")
        assert_error(c.post("/admin/reload", headers={**AUTH, "content-type": "text/plain"}, content=b"x"), 415)


def test_admin_reload_of_an_index_not_configured(make_app):
    with TestClient(make_app(text_index=None)) as c:
        error = assert_error(c.post("/admin/reload", headers=AUTH, json={"index": "text"}), 422)
        assert "LLM2CLIP_TEXT_INDEX" in error["message"]
        assert c.post("/admin/reload", headers=AUTH).json()["indexes"].keys() == {"image"}


@pytest.mark.parametrize("token", ["changethis", "short-token", "aaaaaaaaaaaaaaaaaaaa", f" {TOKEN}"])
def test_placeholder_or_weak_tokens_are_refused(token):
    with pytest.raises(ValidationError, match="admin_token"):
        Settings(admin_token=token)
    assert Settings(admin_token="").admin_token is None  # LLM2CLIP_ADMIN_TOKEN= means off


def test_a_lease_keeps_its_bundle_open_across_swaps_and_close(live, tiny_bundle, rows, fingerprint):
    paths, first = live
    model = load_bundle(tiny_bundle)
    indexes = IndexSet({"image": load_checked(paths["image"], "image", model, True, "cpu")})
    with indexes.lease("image") as held:
        assert held is not None and held.version == first["image"].version
        second = write_version(paths["image"], "image", rows, 2, fingerprint)
        replaced = indexes.swap("image", load_checked(paths["image"], "image", model, True, "cpu"))
        assert replaced is held and not held.closed
        assert indexes.version("image") == second.version and indexes["image"].count == second.count
        # search and records of the held bundle still answer from the old version
        _, found = held.bundle.search(rows.vectors["image"][:1], 3)
        assert {r.id for r in held.bundle.records(found[0].tolist())} <= first["image"].ids
    assert held.closed
    current = indexes.served("image")
    assert current is not None
    with indexes.lease("image") as again:
        indexes.close()
        assert again is current and not current.closed  # closed by the set, open while leased
    assert current.closed
    assert indexes.acquire("image") is None
    with pytest.raises(RuntimeError, match="released more often"):
        current.release()


def test_llm2clip_serve_swaps_a_published_index(tiny_bundle, live, rows, fingerprint):
    """The CLI path: resources loaded before the server starts (and closed by the CLI), watched by the app."""
    paths, first = live
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llm2clip_cli.main", "serve", "--model", str(tiny_bundle), "--image-index",
           str(paths["image"]), "--text-index", str(paths["text"]), "--port", str(port), "--threads", "1",
           "--reload-interval", "0.1", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    base = f"http://127.0.0.1:{port}"

    def versions() -> dict | None:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            return httpx.get(base + "/readyz", timeout=2).json().get("versions")
        except httpx.TransportError:
            return None

    try:
        wait_until(lambda: versions() == {m: first[m].version for m in MODALITIES}, "the server")
        second = write_version(paths["image"], "image", rows, 2, fingerprint)
        wait_until(lambda: versions() == {"image": second.version, "text": first["text"].version}, "the swap")
        r = httpx.post(base + "/search", json={"text": "a red circle", "k": 3}, timeout=30)
        assert r.status_code == 200 and {h["id"] for h in r.json()["results"]} <= second.ids
        assert_error(httpx.post(base + "/admin/reload"), 404, "not_found")  # no token: off
    finally:
        output = stop_server(proc)
    assert proc.returncode == 0 and "Traceback" not in output, output
