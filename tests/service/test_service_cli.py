"""`serve`: the real server over real HTTP, and the one-line refusals before it starts."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_helpers import busy_port, start_server, stop_server

from llm2clip_cli.main import main
from service import cli

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_answers_over_http(tiny_bundle, indexes):
    args = ["--model", str(tiny_bundle), "--image-index", str(indexes[0]), "--text-index", str(indexes[1]),
            "--threads", "1", "--log-level", "warning"]
    proc, base = start_server(args)
    port = int(base.rsplit(":", 1)[1])
    cmd = [sys.executable, "-m", "llm2clip_cli.main", "serve", *args, "--port", str(port)]
    try:
        r = httpx.get(base + "/healthz", timeout=5)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert httpx.get(base + "/readyz", timeout=5).status_code == 200
        r = httpx.post(base + "/search", json={"text": "a red circle", "k": 3}, timeout=10)
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        # a second server on the same port is refused in one line, before loading anything
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert second.stderr == f"llm2clip: error: port {port} on 127.0.0.1 is in use: stop the other server or " \
                                "pass --port\n"
    finally:
        output = stop_server(proc)
    assert proc.returncode == 0, output
    assert "Traceback" not in output


def test_port_in_use_is_one_line_and_exit_2(capsys, tiny_bundle):
    with busy_port() as port:
        assert main(["serve", "--model", str(tiny_bundle), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"llm2clip: error: port {port} on 127.0.0.1 is in use: stop the other server or pass --port\n"


@pytest.mark.parametrize("case", ["missing bundle", "no bundle", "foreign index", "bad env"])
def test_bad_bundle_or_setting_is_one_line_and_exit_2(case, capsys, monkeypatch, tmp_path, tiny_bundle,
                                                      indexes):
    port = str(free_port())
    if case == "missing bundle":
        argv, fragment = ["--model", str(tmp_path / "nothing")], "does not exist"
    elif case == "no bundle":
        argv, fragment = [], "no model bundle given: set LLM2CLIP_MODEL (or pass --model)"
    elif case == "foreign index":
        # a text index passed as the image index: refused before the server starts, naming where it belongs
        argv = ["--model", str(tiny_bundle), "--image-index", str(indexes[1])]
        fragment = "is a text index, but it was given as the image index: pass it as LLM2CLIP_TEXT_INDEX (or " \
                   "pass --text-index)"
    else:
        monkeypatch.setenv("LLM2CLIP_MAX_K", "lots")
        argv, fragment = ["--model", str(tiny_bundle)], "invalid setting max_k: "
    assert main(["serve", *argv, "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llm2clip: error: ") and fragment in err, err
    # the port was given back
    with socket.socket() as s:
        s.bind(("127.0.0.1", int(port)))


def test_counts_must_be_positive():
    with pytest.raises(SystemExit):
        parse("--threads", "0")
    assert parse("--threads", "2").threads == 2


def test_reload_interval_flag():
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(SystemExit):
            parse("--reload-interval", bad)
    assert cli._overrides(parse("--reload-interval", "0.5"))["reload_interval_s"] == 0.5
    assert cli._overrides(parse("--reload-interval", "0"))["reload_interval_s"] == 0.0
    assert cli._overrides(parse())["reload_interval_s"] is None  # the environment's, or the default


def test_a_placeholder_admin_token_stops_serve_without_echoing_it(capsys, monkeypatch, tiny_bundle):
    monkeypatch.setenv("LLM2CLIP_ADMIN_TOKEN", "changethis")
    assert main(["serve", "--model", str(tiny_bundle), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm2clip: error: invalid setting admin_token: ") and "placeholder" in err, err
    assert "changethis" not in err


def test_a_misspelt_variable_is_named_with_the_real_one(capsys, tiny_bundle, monkeypatch):
    """Settings ignore unknown LLM2CLIP_* variables: serve says so rather than keep a default silently."""
    monkeypatch.setenv("LLM2CLIP_TEXT_INDEXES", "somewhere")
    monkeypatch.setenv("LLM2CLIP_TRT_CACHE", "/tmp/trt")  # read by the ONNX backend: no warning
    with busy_port() as port:
        assert main(["serve", "--model", str(tiny_bundle), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "llm2clip: warning: LLM2CLIP_TEXT_INDEXES is not a setting and is ignored (did you mean " \
           "LLM2CLIP_TEXT_INDEX?)" in err
    assert "TRT_CACHE" not in err
