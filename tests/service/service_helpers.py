"""Small helpers shared by the service tests."""

from __future__ import annotations

import base64
import io
import json
import signal
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def wait_until(condition, timeout: float = 10.0) -> None:
    """Polls ``condition`` until it holds; a test fails only if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.001)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def noise_png(side: int, seed: int = 0) -> bytes:
    """Incompressible: its PNG is about 3 * side * side bytes."""
    rng = np.random.default_rng(seed)
    return png_bytes(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header (IHDR, CRC fixed) claims width x height: a decompression bomb
    as far as the header goes."""
    data = bytearray(png_bytes(Image.new("RGB", (1, 1), (200, 10, 10))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "request_id"}, body
    # the id the response carries in X-Request-ID: one id from the client's log to the server's
    assert body["error"]["request_id"] == response.headers["x-request-id"], body
    # a message for users: what went wrong, never the server's insides
    assert "Traceback" not in body["error"]["message"] and "File \"" not in body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (235, 205, 20)}
SHAPES = ("circle", "square", "triangle")
SIDE = 64


def draw_shape(colour: str, shape: str, side: int = SIDE) -> Image.Image:
    image = Image.new("RGB", (side, side), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    box = (side // 5, side // 5, side - side // 5, side - side // 5)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(side // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return image


def read_items(corpus: Path) -> list[dict]:
    return [json.loads(line) for line in (corpus / "items.jsonl").read_text().splitlines()]


@contextmanager
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket listens on for the duration."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def server_output(proc: subprocess.Popen) -> str:
    """What a server of start_server (or one started with its stdout piped) has written so far."""
    log = getattr(proc, "log_file", None)
    if log is None:
        return proc.stdout.read() if proc.stdout else ""
    log.seek(0)
    return log.read()


def stop_server(proc: subprocess.Popen) -> str:
    """Ctrl-C a server, as a user would; its output."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return server_output(proc)


def start_server(args: list[str], env: dict[str, str] | None = None, timeout_s: float = 90.0
                 ) -> tuple[subprocess.Popen, str]:
    """`llm2clip serve ARGS` on a free port of 127.0.0.1, the developer's LLM2CLIP_* variables left out and
    ``env`` added; returns (process, base URL) once /readyz is 200. Its output goes to a file, not a pipe: the
    access log writes a line a request, and a pipe nobody reads until the end blocks the server at 64 KiB."""
    import os
    import sys
    import tempfile
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llm2clip_cli.main", "serve", *args, "--port", str(port)]
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the process)
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], stdout=log,
                            stderr=subprocess.STDOUT, text=True,
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("LLM2CLIP_")},
                                 "TOKENIZERS_PARALLELISM": "false", **(env or {})})
    proc.log_file = log  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, server_output(proc)
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the server was not ready in {timeout_s:.0f} s")
        time.sleep(0.2)
