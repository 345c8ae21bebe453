"""The deployment, proven on this machine: the compose services' own commands run natively (seed, index builder,
two api replicas, the healthcheck), HAProxy in front with deploy/haproxy's config, and a real Prometheus with
deploy/prometheus' config and rules. Traffic exercises every route, 4xx errors and 429s; then every dashboard
panel's query and every alert's quantity is evaluated through Prometheus' HTTP API and must return series.

Set DEPLOY_STACK_REPORT=<file> to write the series count of each query there (the issue's closing note)."""

from __future__ import annotations

import base64
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml
from compose_project import Remap
from dashboard_queries import dashboard_queries
from stack import DEPLOY, Stack, alert_quantity

from llm2clip.data import generate_scenes

pytestmark = pytest.mark.slow

CAPTION = ("A medium-sized red sneaker sits in the top-left cell of a three by three grid, upside down. In the "
           "bottom-right cell there is a large white bag. The background is dotted blue.")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_bundle):
    tmp = tmp_path_factory.mktemp("stack")
    generate_scenes(tmp / "scenes", 16, "test", 5, progress=False)
    folders = {"/models": tmp / "models", "/indexes": tmp / "indexes", "/corpus": tmp / "corpus",
               "/seed/bundle": tiny_bundle, "/seed/corpus": tmp / "scenes"}
    for mount in ("/models", "/indexes", "/corpus"):  # fresh named volumes: empty folders
        folders[mount].mkdir()
    s = Stack(tmp, Remap(folders))
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture(scope="module")
def running(stack):
    """seed -> index-builder -> api replicas (healthcheck) -> proxy -> Prometheus, as compose orders them."""
    out = stack.run_job("seed")
    assert "seed: bundle and corpus copied" in out.stdout
    stack.run_job("index-builder")
    for modality in ("image", "text"):
        assert (stack.tmp / "indexes" / modality / "manifest.json").is_file()
    # a: compose's api environment as is; b: the same with a one-item queue that waits 300 ms to batch, so
    # that concurrent queries overflow it (429)
    stack.start_api("a", {"LLM2CLIP_THREADS": "1"})
    assert stack.healthcheck("a").returncode == 1  # nothing answers yet (or not ready)
    stack.start_api("b", {"LLM2CLIP_THREADS": "1", "LLM2CLIP_BATCH__QUEUE_SIZE": "1",
                          "LLM2CLIP_BATCH__WAIT_MS": "300"})
    for name in ("a", "b"):
        stack.wait_healthy(name)
    stack.start_proxy(["a", "b"])
    stack.start_prometheus(["a", "b"])
    return stack


def png_of_corpus(stack: Stack) -> bytes:
    items = [json.loads(line) for line in (stack.tmp / "corpus" / "items.jsonl").read_text().splitlines()]
    return (stack.tmp / "corpus" / items[0]["image"]).read_bytes()


def send_traffic(stack: Stack, rnd: int) -> dict[int, int]:
    """Every route through the proxy, errors included; a burst at replica b for 429s. Status -> count.
    The burst's texts are new in each round `rnd`: repeated ones would come from b's query cache, not its queue."""
    seen: dict[int, int] = {}
    png = png_of_corpus(stack)

    def note(r: httpx.Response) -> httpx.Response:
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        return r

    with httpx.Client(base_url=stack.url("proxy"), timeout=30) as c:
        hits = note(c.post("/search", json={"text": CAPTION, "k": 3})).json()["results"]
        note(c.post("/search", files={"image": ("q.png", png, "image/png")}, data={"k": "2"}))
        note(c.post("/embed", json={"texts": ["a white bag"], "images_base64": [base64.b64encode(png).decode()]}))
        note(c.get("/items/" + hits[0]["uri"]))
        for path in ("/", "/info", "/healthz", "/readyz", "/metrics"):
            note(c.get(path))
        note(c.post("/search", json={"text": CAPTION, "k": 0}))  # 422
        note(c.post("/search", json={"text": "x" * 9000}))  # 413
        note(c.post("/search", content=b"{not json", headers={"content-type": "application/json"}))  # 4xx
        note(c.get("/items/../../etc/passwd"))  # 404, nothing outside the corpus
        note(c.get("/no-such-route"))  # 404
    for _ in range(3):  # the query cache: the same text again on one replica
        note(httpx.post(stack.url("a") + "/search", json={"text": CAPTION, "k": 1}, timeout=30))
    with ThreadPoolExecutor(12) as pool:  # replica b's one-item queue overflows
        texts = [f"{CAPTION} Variant {rnd}.{i}." for i in range(12)]
        for r in pool.map(lambda t: httpx.post(stack.url("b") + "/search", json={"text": t}, timeout=30), texts):
            note(r)
    return seen


def test_every_route_answers_through_the_proxy(running):
    seen = {}
    for rnd in range(3):  # rounds a scrape apart, so that rate() has two samples of every counter
        for status, n in send_traffic(running, rnd).items():
            seen[status] = seen.get(status, 0) + n
        time.sleep(1.5)
    assert seen.get(200, 0) >= 30 and seen.get(429, 0) >= 1 and seen.get(404, 0) >= 6
    assert {413, 422} <= set(seen) and not [s for s in seen if s >= 500], seen
    # both replicas took proxied traffic
    for name in ("a", "b"):
        metrics = httpx.get(running.url(name) + "/metrics", timeout=10).text
        assert 'llm2clip_http_requests_total{method="POST",route="/search",status="200"}' in metrics, name


def scraped_after_traffic(stack: Stack) -> None:
    """Wait until Prometheus has the 429 counter of replica b in two scrapes (rate() needs two samples)."""
    deadline = time.monotonic() + 30
    while not stack.query('rate(llm2clip_rejected_requests_total{reason="overloaded"}[1m]) > 0'):
        assert time.monotonic() < deadline, "Prometheus never saw the 429s"
        time.sleep(0.5)
    time.sleep(2)


def test_every_dashboard_panel_returns_series(running):
    scraped_after_traffic(running)
    counts = {label: len(running.query(promql)) for label, promql in dashboard_queries()}
    assert len(counts) >= 20
    report("panels", counts)
    assert not [label for label, n in counts.items() if n == 0], counts


def test_every_alert_is_evaluated_and_reads_series(running):
    rules = [r for g in yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
             for r in g["rules"]]
    counts = {r["alert"]: len(running.query(alert_quantity(r["expr"]))) for r in rules}
    report("alerts", counts)
    assert not [a for a, n in counts.items() if n == 0], counts
    # Prometheus loaded and evaluated each rule without error; on this healthy stack none fires
    loaded = httpx.get(running.url("prometheus") + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    states = {r["name"]: (r["health"], r["state"]) for g in loaded for r in g["rules"]}
    assert set(states) == set(counts)
    assert all(h == "ok" and s == "inactive" for h, s in states.values()), states
    # the mismatch alert's join is real: model and index fingerprints match on every replica
    assert len(running.query(alert_quantity(next(r["expr"] for r in rules
                                                 if r["alert"] == "LLM2CLIPModelIndexMismatch")))) == 4


def test_a_replica_going_away_costs_no_request(running):
    running.stop("b")
    with httpx.Client(base_url=running.url("proxy"), timeout=30) as c:
        statuses = [c.post("/search", json={"text": CAPTION, "k": 1}).status_code for _ in range(10)]
    assert statuses == [200] * 10
    deadline = time.monotonic() + 20
    while not running.query('up{job="llm2clip"} == 0'):  # what LLM2CLIPNotReady reads
        assert time.monotonic() < deadline, "Prometheus did not see the replica go"
        time.sleep(0.5)


def report(section: str, counts: dict[str, int]) -> None:
    path = os.environ.get("DEPLOY_STACK_REPORT")
    if not path:
        return
    data = json.loads(open(path).read()) if os.path.exists(path) else {}
    data[section] = counts
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
