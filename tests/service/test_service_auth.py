"""API keys and rate limits on the real app: who gets in, what a refusal looks like, what is never read."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_helpers import assert_error

from service.app import create_app
from service.auth import TokenBuckets, needs_key
from service.keys import KeyRing, parse_keys, read_keys_file
from service.settings import Settings

KEY_A = "alpha-7Qm2xV9pLk3Rt8Wz"
KEY_B = "bravo-Hd4Jn6Yc1Us5Ge0B"
KEY_C = "charlie-Pw8Zk2Mx7Vq4Lr"
CHALLENGE = 'Bearer realm="llm2clip"'
ITEM = "/items/images/00_red_circle.png"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rejected(client: TestClient, reason: str) -> float:
    for line in client.get("/metrics", headers=bearer(KEY_A)).text.splitlines():
        if line.startswith(f'llm2clip_rejected_requests_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def assert_unauthorized(r) -> None:
    error = assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == CHALLENGE
    # the same words whether the key was missing or wrong: a refusal says nothing about the keys
    assert error["message"] == "send a valid API key as Authorization: Bearer <key>"


def test_without_keys_everything_is_open_as_before(app_client):
    c = app_client()
    assert c.post("/search", json={"text": "red circle", "k": 2}).status_code == 200
    assert c.post("/embed", json={"texts": ["red circle"]}).status_code == 200
    assert c.get("/info").status_code == 200
    assert c.get(ITEM).status_code == 200
    assert c.get("/metrics").status_code == 200
    schema = c.get("/openapi.json").json()
    assert "apiKey" not in schema["components"]["securitySchemes"]
    assert "security" not in schema["paths"]["/search"]["post"]


@pytest.mark.parametrize("headers", [
    {},
    bearer("wrong-key-0123456789abc"),
    bearer(""),
    {"Authorization": KEY_A},  # no scheme
    {"Authorization": "Basic " + KEY_A},
    {"Authorization": "Bearer " + KEY_A + "x"},
], ids=["missing", "wrong", "empty", "no scheme", "basic", "longer"])
def test_a_missing_or_wrong_key_is_401_on_every_api_route(app_client, headers):
    c = app_client(api_keys=f"{KEY_A},{KEY_B}")
    before = rejected(c, "unauthorized")
    for r in (c.post("/search", json={"text": "red circle"}, headers=headers),
              c.post("/embed", json={"texts": ["red"]}, headers=headers),
              c.get("/info", headers=headers),
              c.get(ITEM, headers=headers)):
        assert_unauthorized(r)
        assert KEY_A not in r.text
    assert rejected(c, "unauthorized") == before + 4


def test_each_of_two_rotated_keys_is_let_in(app_client):
    c = app_client(api_keys=f'["web:{KEY_A}", "web:{KEY_B}"]')
    for key in (KEY_A, KEY_B):
        r = c.post("/search", json={"text": "red circle", "k": 2}, headers=bearer(key))
        assert r.status_code == 200, r.text
        assert c.get(ITEM, headers=bearer(key)).status_code == 200
        # the scheme name is case-insensitive (RFC 7235)
        assert c.get("/info", headers={"Authorization": f"bearer {key}"}).status_code == 200


def test_probes_page_docs_and_admin_do_not_take_api_keys(app_client):
    admin = "admin-Zr5Nq8Wx2Kt6Hm3J"
    c = app_client(api_keys=KEY_A, admin_token=admin)
    for path in ("/healthz", "/readyz", "/", "/docs", "/openapi.json", "/metrics"):
        assert c.get(path).status_code == 200, path
    # the admin API has its own token: an API key does not open it, the admin token opens nothing else
    assert_error(c.post("/admin/reload", headers=bearer(KEY_A)), 401, "unauthorized")
    assert c.post("/admin/reload", headers=bearer(admin)).status_code == 200
    assert_unauthorized(c.post("/search", json={"text": "red"}, headers=bearer(admin)))


def test_metrics_need_a_key_only_when_asked(app_client):
    c = app_client(api_keys=KEY_A, metrics_auth=True)
    assert_unauthorized(c.get("/metrics"))
    r = c.get("/metrics", headers=bearer(KEY_A))
    assert r.status_code == 200 and "llm2clip_rejected_requests_total" in r.text
    assert KEY_A not in r.text
    assert c.get("/healthz").status_code == 200


def test_openapi_declares_the_bearer_scheme_and_where_it_is_needed(app_client):
    schema = app_client(api_keys=KEY_A).get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["apiKey"][
            "description"]}
    paths = schema["paths"]
    for path, method in (("/search", "post"), ("/embed", "post"), ("/info", "get"), ("/items/{path}", "get")):
        assert paths[path][method]["security"] == [{"apiKey": []}], path
        assert "401" in paths[path][method]["responses"], path
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in paths[path]["get"], path
    # the admin API is off without its token (404): declared only when it is on
    assert "security" not in paths["/admin/reload"]["post"]
    assert "adminToken" not in schema["components"]["securitySchemes"]
    admin = app_client(api_keys=KEY_A, admin_token="an-admin-token-of-some-length").get("/openapi.json").json()
    assert admin["paths"]["/admin/reload"]["post"]["security"] == [{"adminToken": []}]


class CountingApp:
    """The app, counting the request body bytes anything inside it reads."""

    def __init__(self, app) -> None:
        self.app = app
        self.read = 0

    async def __call__(self, scope, receive, send):
        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                self.read += len(message.get("body", b""))
            return message

        await self.app(scope, counting_receive if scope["type"] == "http" else receive, send)


@pytest.mark.parametrize("size", [1024 * 1024, 20 * 1024 * 1024], ids=["1MB", "20MB"])
def test_an_unauthenticated_body_is_not_read(make_settings, shared_resources, size):
    counted = CountingApp(create_app(make_settings(api_keys=KEY_A), resources=shared_resources))
    with TestClient(counted) as c:
        body = b'{"texts": ["' + b"x" * size + b'"]}'
        r = c.post("/embed", content=body, headers={"Content-Type": "application/json"})
        assert_unauthorized(r)
        assert counted.read == 0
        assert r.headers["connection"] == "close"  # nor is it drained to keep the connection
        # with the key, the same body is read (and refused for what it holds, or its size)
        r = c.post("/embed", content=body, headers={"Content-Type": "application/json", **bearer(KEY_A)})
        assert r.status_code in (413, 422), r.text


def test_the_keys_file_is_reread_when_it_changes(app_client, tmp_path, caplog):
    path = tmp_path / "keys"
    path.write_text(f"# clients\nweb:{KEY_A}\n\n{KEY_B}  # the batch job\n")
    c = app_client(api_keys_file=path)
    assert c.get("/info", headers=bearer(KEY_A)).status_code == 200
    assert c.get("/info", headers=bearer(KEY_B)).status_code == 200
    assert_unauthorized(c.get("/info", headers=bearer(KEY_C)))

    def rewrite(text: str) -> None:
        stat = path.stat()
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    rewrite(f"web:{KEY_C}\n{KEY_B}\n")  # KEY_A rotated out, KEY_C in
    assert_unauthorized(c.get("/info", headers=bearer(KEY_A)))
    assert c.get("/info", headers=bearer(KEY_C)).status_code == 200
    assert c.get("/info", headers=bearer(KEY_B)).status_code == 200
    # a broken edit leaves the last good keys in force, and the log says why without the key
    with caplog.at_level(logging.ERROR, logger="service.keys"):
        rewrite(f"web:{KEY_A}\nshort\n")
        assert c.get("/info", headers=bearer(KEY_C)).status_code == 200
    assert "refused" in caplog.text and "line 2" in caplog.text and KEY_A not in caplog.text
    assert_unauthorized(c.get("/info", headers=bearer(KEY_A)))
    rewrite("# everyone revoked\n")
    assert_unauthorized(c.get("/info", headers=bearer(KEY_C)))


@pytest.mark.parametrize("keys", ["changeme", "short-key", f"{KEY_A}, changethis", f"a:{KEY_A},b:{KEY_A}",
                                  f"bad id:{KEY_A}", '["unclosed"', ","])
def test_weak_or_unclear_keys_stop_the_service(keys):
    with pytest.raises(ValidationError) as exc:
        Settings(api_keys=keys)
    assert "api_keys" in str(exc.value)
    for secret in (KEY_A, "changeme", "changethis", "short-key"):
        assert secret not in str(exc.value)


def test_a_weak_or_empty_keys_file_stops_the_service(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# nobody yet\n")
    with pytest.raises(ValidationError, match="lists no key"):
        Settings(api_keys_file=path)
    path.write_text(f"web:{KEY_A}\nbatch:password\n")
    with pytest.raises(ValidationError, match="line 2") as exc:
        Settings(api_keys_file=path)
    assert "password" not in str(exc.value).replace("placeholder", "")
    with pytest.raises(ValidationError, match="cannot read"):
        Settings(api_keys_file=tmp_path / "missing")
    assert Settings(api_keys="", api_keys_file="").api_keys is None  # empty in a compose file: off


def test_a_key_without_an_id_is_named_by_its_hash_never_itself():
    [named, anonymous] = parse_keys(f"web:{KEY_A},{KEY_B}")
    assert named.id == "web"
    assert anonymous.id == hashlib.sha256(KEY_B.encode()).hexdigest()[:12]
    assert KEY_B not in repr(anonymous) and KEY_B not in repr(KeyRing([named, anonymous]).keys())


def test_keys_file_format(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"  web:{KEY_A}  \n# a comment\n{KEY_B} # trailing comment\n\n")
    assert [k.id for k in read_keys_file(path)] == ["web", hashlib.sha256(KEY_B.encode()).hexdigest()[:12]]


def test_route_policy():
    assert needs_key("/search", False) and needs_key("/items/{path:path}", False) and needs_key("/info", False)
    assert needs_key("/some/new/route", False)  # closed unless listed
    assert not needs_key("/healthz", True) and not needs_key("/", True) and not needs_key("/admin/reload", True)
    assert needs_key("/metrics", True) and not needs_key("/metrics", False)


def test_rate_limit_answers_429_after_the_burst_per_key(app_client):
    c = app_client(api_keys=f"a:{KEY_A},b:{KEY_B}", rate_limit_per_minute=6, rate_limit_burst=2)
    before = rejected(c, "rate_limited")
    for _ in range(2):
        assert c.post("/search", json={"text": "red circle", "k": 1}, headers=bearer(KEY_A)).status_code == 200
    r = c.post("/search", json={"text": "red circle", "k": 1}, headers=bearer(KEY_A))
    error = assert_error(r, 429, "rate_limited")
    assert 1 <= int(r.headers["retry-after"]) <= 10  # 6 a minute: a token every 10 s
    assert "overloaded" not in error["message"]
    assert_error(c.post("/embed", json={"texts": ["red"]}, headers=bearer(KEY_A)), 429, "rate_limited")
    # another key has its own bucket; routes that run no encoder are not limited
    assert c.post("/search", json={"text": "red circle", "k": 1}, headers=bearer(KEY_B)).status_code == 200
    assert c.get("/info", headers=bearer(KEY_A)).status_code == 200
    assert c.get(ITEM, headers=bearer(KEY_A)).status_code == 200
    assert rejected(c, "rate_limited") == before + 2
    assert "connection" not in c.get("/info").headers  # a refusal without a body keeps the connection
    # a client without a valid key is refused as unauthorized, and spends nobody's tokens
    assert_unauthorized(c.post("/search", json={"text": "red"}, headers=bearer(KEY_C)))


def test_without_keys_the_rate_limit_is_per_client_address(app_client):
    c = app_client(rate_limit_per_minute=60)  # burst 10
    codes = [c.post("/search", json={"k": 1}).status_code for _ in range(11)]
    assert codes == [422] * 10 + [429]  # limited before the body is even looked at


def test_token_bucket_refills_at_the_rate():
    now = [100.0]
    buckets = TokenBuckets(per_minute=6, burst=2, clock=lambda: now[0])
    assert buckets.take("a") == 0 and buckets.take("a") == 0
    assert buckets.take("a") == pytest.approx(10.0)
    assert buckets.take("b") == 0  # independent
    now[0] += 10.0
    assert buckets.take("a") == 0
    assert buckets.take("a") == pytest.approx(10.0)
    now[0] += 60.0
    assert [buckets.take("a") for _ in range(3)][:2] == [0, 0]  # refills to the burst, not past it


def test_many_clients_stay_bounded():
    now = [0.0]
    buckets = TokenBuckets(per_minute=60, burst=5, max_clients=100, clock=lambda: now[0])
    for n in range(1000):
        buckets.take(f"ip:{n}")
        now[0] += 0.01
    assert len(buckets._buckets) <= 100
