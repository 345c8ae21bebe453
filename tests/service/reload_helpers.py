"""Index versions to publish into a served path, a real server in a thread, and search load from threads."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI
from PIL import Image
from service_helpers import b64, draw_shape, png_bytes, read_items

from llm2clip.bundle import publish, staging_dir
from llm2clip.index import IndexWriter, Record
from service.indexes import manifest_version

TOKEN = "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Rows:
    """Every row the tiny model makes of the service corpus: images (image index), captions (text index)."""

    vectors: dict[str, np.ndarray]
    records: dict[str, list[Record]]


def corpus_rows(corpus: Path, encoders) -> Rows:
    image_encoder, text_encoder = encoders
    items = read_items(corpus)
    images = [Image.open(corpus / it["image"]) for it in items]
    captions = [(it, key) for it in items for key in ("long", "short")]
    return Rows(
        vectors={"image": image_encoder.encode(images),
                 "text": text_encoder.encode([it["captions"][key] for it, key in captions])},
        records={
            "image": [Record(id=it["id"], uri=it["image"], caption=it["captions"]["long"], caption_key="long",
                             meta=it["meta"]) for it in items],
            "text": [Record(id=it["id"], uri=it["image"], caption=it["captions"][key], caption_key=key,
                            meta=it["meta"]) for it, key in captions],
        },
    )


@dataclass(frozen=True)
class Published:
    version: str
    ids: frozenset[str]
    count: int


def write_version(target: Path, modality: str, rows: Rows, tag: int, fingerprint: str,
                  corpus_root: str | None = None) -> Published:
    """Index version ``tag`` published into ``target`` the way builds publish (staged, renamed into place):
    its ids are the items' prefixed with ``v<tag>-`` and it drops ``tag`` rows, so that results show which
    version answered."""
    vectors, records = rows.vectors[modality], rows.records[modality]
    keep = len(records) - tag
    writer = IndexWriter(target, modality, vectors.shape[1], fingerprint)
    writer.add(vectors[:keep], [Record(id=f"v{tag}-{r.id}", uri=r.uri, caption=r.caption,
                                       caption_key=r.caption_key, meta=r.meta) for r in records[:keep]])
    writer.write(build={"corpus_root": corpus_root} if corpus_root else {})
    return Published(manifest_version((target / "manifest.json").read_bytes()),
                     frozenset(f"v{tag}-{r.id}" for r in records[:keep]), keep)


def publish_broken(target: Path, modality: str, rows: Rows, fingerprint: str, damage: Callable[[Path], None],
                   dim: int | None = None) -> str:
    """A bundle written whole, then ``damage``d, then renamed into ``target``; returns its version."""
    built = staging_dir(target.parent / "broken") / "bundle"
    if dim is None:
        vectors, records = rows.vectors[modality], rows.records[modality]
    else:
        vectors = np.random.default_rng(0).normal(size=(5, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        records = [Record(id=f"dim-{i}", uri=None, caption=None) for i in range(5)]
    writer = IndexWriter(built, modality, vectors.shape[1], fingerprint)
    writer.add(vectors, records)
    writer.write()
    damage(built)
    manifest = built / "manifest.json"
    version = manifest_version(manifest.read_bytes()) if manifest.exists() else ""
    publish(built, target)
    return version


def truncate_index(folder: Path) -> None:
    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[: len(data) // 2])


def wrong_sha(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["index.faiss"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))


def no_manifest(folder: Path) -> None:
    (folder / "manifest.json").unlink()


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app behind a real uvicorn server on 127.0.0.1 in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


@dataclass
class Answer:
    target: str
    status: int
    version: str | None = None
    ids: list[str] = field(default_factory=list)
    error: str | None = None


class SearchLoad:
    """Threads searching without pause, text -> images and image -> captions, until ``stop``."""

    def __init__(self, base: str, threads: int = 4, k: int = 8) -> None:
        self.base = base
        self.k = k
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        self._image = b64(png_bytes(draw_shape("blue", "square")))

    def __enter__(self) -> SearchLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_for(self, more: int, timeout_s: float = 60) -> None:
        """Until ``more`` answers beyond those in now."""
        goal = self.count() + more
        deadline = time.monotonic() + timeout_s
        while self.count() < goal:
            assert time.monotonic() < deadline, f"only {self.count()} answers of {goal}"
            time.sleep(0.02)

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                text = n % 2 == 0
                body = {"text": f"a red circle, query {i % 5}", "k": self.k} if text else \
                       {"image_base64": self._image, "k": self.k}
                answer = self._ask(client, "image" if text else "text", body)
                with self._lock:
                    self.answers.append(answer)

    def _ask(self, client: httpx.Client, target: str, body: dict) -> Answer:
        try:
            r = client.post("/search", json=body)
        except httpx.HTTPError as exc:
            return Answer(target, 0, error=repr(exc))
        if r.status_code != 200:
            return Answer(target, r.status_code, error=r.text)
        data = r.json()
        return Answer(target, 200, data["index_version"], [h["id"] for h in data["results"]])


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
