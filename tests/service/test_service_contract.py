"""The OpenAPI contract says the truth: schemathesis (the engine `st run` drives, all checks, positive and
negative data) against the app finds no failure and no 5xx, and the either/or bodies are in the schema."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import pytest
import schemathesis  # noqa: E402  (the dev extra pins it)

from service.app import create_app
from service.contract import EXAMPLE_PNG

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 30


def run_schemathesis(app, max_examples: int = MAX_EXAMPLES, seed: int = 13) -> dict:
    """Every phase and check of `st run --checks all --mode all`, in process against the ASGI app, with this
    repository's schemathesis.toml; -> counts of cases, failures (by check) and 5xx responses."""
    from schemathesis.engine import events, from_schema
    from schemathesis.generation import GenerationMode

    config = schemathesis.Config.from_path(ROOT / "schemathesis.toml")
    config.update(seed=seed, max_failures=None)
    project = config.projects.override
    project.checks.update(included_check_names=["all"])
    project.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=max_examples,
                              deterministic=True, database="none")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    cases, failures, server_errors, errors, seen = 0, Counter(), 0, [], []
    for event in from_schema(schema).execute():
        if isinstance(event, (events.NonFatalError, events.FatalError)):
            errors.append(f"{getattr(event, 'label', '')}: {getattr(event, 'value', None) or getattr(event, 'exception', event)!r}")
            if isinstance(event, events.NonFatalError):
                errors.append(event.info.format())
        recorder = getattr(event, "recorder", None)
        if recorder is None:
            continue
        cases += len(recorder.cases)
        server_errors += sum(1 for i in recorder.interactions.values()
                             if i.response is not None and i.response.status_code >= 500)
        for case_id, checks in recorder.checks.items():
            failed = [f"{c.name}: {c.failure_info.failure.title}" for c in checks if c.failure_info is not None]
            failures.update(failed)
            if failed and len(seen) < 5:
                interaction = recorder.interactions.get(case_id)
                response = interaction.response if interaction is not None else None
                seen.append((failed, recorder.cases[case_id].value.meta.phase.name, recorder.cases[case_id].value.as_curl_command(),
                             response.content[:300] if response is not None else None))
    return {"cases": cases, "failures": dict(failures), "server_errors": server_errors, "errors": errors,
            "examples": seen}


def test_schemathesis_finds_no_contract_failure(make_settings, monkeypatch):
    from schemathesis.python import asgi

    monkeypatch.chdir(ROOT)  # schemathesis.toml names its hooks file relative to the repository root
    try:
        # schemathesis starts the app's lifespan (model and indexes load) and keeps it until told to stop
        summary = run_schemathesis(create_app(make_settings(reload_interval_s=0)))
    finally:
        asgi.shutdown_lifespans()
    print("schemathesis:", summary)
    assert summary["errors"] == []
    assert summary["failures"] == {}, summary["examples"]
    assert summary["server_errors"] == 0
    assert summary["cases"] >= 2 * MAX_EXAMPLES


def _body(spec: dict, path: str, media: str) -> dict:
    return spec["paths"][path]["post"]["requestBody"]["content"][media]


def test_schema_says_either_text_or_image_and_at_least_one_item(app_client):
    client = app_client(max_text_chars=500, max_batch=7, max_k=20)
    spec = client.get("/openapi.json").json()
    search = _body(spec, "/search", "application/json")["schema"]
    assert [b["required"] for b in search["oneOf"]] == [["text"], ["image_base64"]]
    assert search["properties"]["text"]["maxLength"] == 500
    assert search["properties"]["k"]["maximum"] == 20
    form = _body(spec, "/search", "multipart/form-data")
    assert [b["required"] for b in form["schema"]["oneOf"]] == [["text"], ["image"]]
    assert form["schema"]["properties"]["image"]["format"] == "binary"
    embed = _body(spec, "/embed", "application/json")["schema"]
    assert [b["required"] for b in embed["anyOf"]] == [["texts"], ["images_base64"]]
    assert embed["properties"]["texts"]["maxItems"] == 7
    for path in ("/search", "/embed"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"200", "400", "413", "415", "422", "429", "503"} <= set(responses)
        for media in ("application/json", "multipart/form-data"):
            assert _body(spec, path, media)["examples"]


def test_every_documented_example_is_answered_200(client):
    spec = client.get("/openapi.json").json()
    for path in ("/search", "/embed"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        for name, example in content["application/json"]["examples"].items():
            r = client.post(path, json=example["value"])
            assert r.status_code == 200, (path, name, r.text)
        for name, example in content["multipart/form-data"]["examples"].items():
            value = example["value"]
            fields = [(k, str(v)) for k, vs in value.items() for v in (vs if isinstance(vs, list) else [vs])]
            r = client.post(path, files=[(k, (None, v)) for k, v in fields])
            assert r.status_code == 200, (path, name, r.text)
    # the item image example is one the service really serves
    [parameter] = spec["paths"]["/items/{path}"]["get"]["parameters"]
    r = client.get("/items/" + parameter["example"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


@pytest.mark.parametrize("fields", [
    [("texts", (None, "{}"))],
    [("texts", (None, "a cat")), ("texts", (None, ' [1, "x"] '))],
])
def test_multipart_texts_that_are_json_containers_are_refused(client, fields):
    r = client.post("/embed", files=fields)
    assert r.status_code == 422, r.text
    assert "JSON object or array" in r.json()["error"]["message"]


def test_a_text_with_brackets_inside_is_still_a_text(client):
    r = client.post("/embed", files=[("texts", (None, "[draft] a red circle"))])
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body", [
    {"text": None, "image_base64": EXAMPLE_PNG},
    {"text": "a red circle", "target": None},
    {"text": "a red circle", "k": "5"},
    {"text": "a red circle", "k": True},
    {"texts": None, "images_base64": [EXAMPLE_PNG]},
])
def test_json_nulls_and_strings_for_numbers_are_refused(client, body):
    path = "/embed" if "texts" in body else "/search"
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text


def test_an_integral_float_k_is_an_integer(client):
    r = client.post("/search", json={"text": "a red circle", "k": 3.0})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 3
    png = base64.b64decode(EXAMPLE_PNG)
    r = client.post("/search", files={"image": ("x.png", png, "image/png")}, data={"k": "2"})
    assert r.status_code == 200 and len(r.json()["results"]) == 2
