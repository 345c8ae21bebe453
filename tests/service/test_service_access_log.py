"""Request ids and the JSON access log, in the app and from `llm2clip serve`."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import httpx
import pytest
from service_helpers import assert_error, start_server, stop_server

from service.access_log import access_logger

REPO = Path(__file__).resolve().parents[2]
KEY = "delta-Xq3Bv7Nc2Lp9Ws4K"
QUERY = "a red circle on a plain canvas, access log test"
FIELDS = {"time", "request_id", "method", "route", "status", "latency_ms", "modality", "target", "tokens",
          "truncated", "k", "texts", "images", "key_id", "client", "error"}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_lines():
    handler = Lines()
    access_logger.addHandler(handler)
    yield handler.lines
    access_logger.removeHandler(handler)


def test_a_valid_request_id_is_echoed(client):
    for rid in ("abc-123", "trace:4bf92f35.00f0_67aa", "x" * 128):
        r = client.get("/healthz", headers={"X-Request-ID": rid})
        assert r.headers["x-request-id"] == rid


def test_a_request_id_is_made_when_missing_or_unsafe(client):
    ids = set()
    for given in (None, "", "x" * 129, "has space", "<script>", "new\\nline", "é-accent"):
        headers = {} if given is None else {"X-Request-ID": given.encode("utf-8")}
        rid = client.get("/healthz", headers=headers).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid), (given, rid)
        ids.add(rid)
    assert len(ids) == 7  # a new one each time


def test_errors_carry_the_request_id(client, app_client):
    r = client.post("/search", json={"k": 0}, headers={"X-Request-ID": "req-42"})
    assert assert_error(r, 422, "invalid_request")["request_id"] == "req-42"
    r = client.get("/no/such/route")
    assert assert_error(r, 404)["request_id"] == r.headers["x-request-id"]
    r = app_client(api_keys=KEY).post("/search", json={"text": "red"}, headers={"X-Request-ID": "req-43"})
    assert assert_error(r, 401, "unauthorized")["request_id"] == "req-43"


def test_one_json_line_per_request_without_key_or_query(app_client, access_lines):
    c = app_client(api_keys=KEY)
    r = c.post("/search", json={"text": QUERY, "k": 3}, headers={"Authorization": f"Bearer {KEY}",
                                                                 "X-Request-ID": "search-1"})
    assert r.status_code == 200
    [line] = access_lines
    assert KEY not in line and QUERY not in line and "plain canvas" not in line
    entry = json.loads(line)
    assert set(entry) == FIELDS
    assert entry["request_id"] == "search-1" and entry["method"] == "POST" and entry["route"] == "/search"
    assert entry["status"] == 200 and entry["latency_ms"] > 0 and entry["client"] == "testclient"
    assert entry["modality"] == "text" and entry["target"] == "image" and entry["k"] == 3
    assert entry["tokens"] == r.json()["query"]["tokens"] and entry["truncated"] is False
    assert entry["key_id"] == hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert entry["error"] is None
    assert entry["time"].endswith("Z")


def test_refusals_and_routes_are_logged_by_template(app_client, access_lines):
    c = app_client(api_keys=f"web:{KEY}")
    c.get("/items/images/00_red_circle.png")
    c.get("/items/images/00_red_circle.png", headers={"Authorization": f"Bearer {KEY}"})
    c.post("/embed", json={"texts": ["red", "blue"]}, headers={"Authorization": f"Bearer {KEY}"})
    entries = [json.loads(line) for line in access_lines]
    assert [(e["route"], e["status"], e["key_id"], e["error"]) for e in entries] == [
        ("/items/{path:path}", 401, None, "unauthorized"),
        ("/items/{path:path}", 200, "web", None),
        ("/embed", 200, "web", None),
    ]
    assert entries[2]["texts"] == 2 and entries[2]["images"] == 0 and entries[2]["tokens"] > 0
    assert all(KEY not in line for line in access_lines)


def test_the_query_text_is_logged_only_when_asked(app_client, access_lines):
    app_client(log_queries=True).post("/search", json={"text": QUERY, "k": 1})
    assert json.loads(access_lines[-1])["query"] == QUERY
    app_client(access_log="off").post("/search", json={"text": QUERY, "k": 1})
    assert len(access_lines) == 1


def test_serve_writes_json_access_lines_on_stderr(tiny_bundle, indexes):
    proc, base = start_server(["--model", str(tiny_bundle), "--image-index", str(indexes[0]), "--threads", "1",
                               "--log-level", "info"], env={"LLM2CLIP_API_KEYS": f"cli:{KEY}"})
    try:
        r = httpx.post(base + "/search", json={"text": QUERY, "k": 2}, timeout=10,
                       headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": "cli-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "cli-1"
        assert httpx.post(base + "/search", json={"text": QUERY}, timeout=10).status_code == 401
    finally:
        output = stop_server(proc)
    entries = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [(e["route"], e["status"], e["key_id"]) for e in entries if e["route"] == "/search"] == [
        ("/search", 200, "cli"), ("/search", 401, None)], output
    assert KEY not in output and QUERY not in output
    assert '"POST /search HTTP/1.1"' not in output  # uvicorn's own access log is off
