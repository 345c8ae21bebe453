"""The work folder of a resumable build, ``<target>.partial/`` beside the index bundle it builds, and the lock
that keeps two commands from writing one index at once.

A build embeds its corpus a shard of items at a time and saves each shard there: ``shard-00000.npy`` (float32
embeddings) and ``shard-00000.json`` (the rows they stand for, the items skipped). Each file is written under a
temporary name, flushed to disk and renamed, the JSON last, so that whenever the build is killed a shard is
either complete or absent. ``key.json`` records what the shards were made from (dataset items, model, modality,
captions, encoder variant, batching, shard size); a build with another key discards them. The bundle is
assembled from the shards once all are done, and the folder removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from index_builder.reader import Skip
from llm2clip.data.dataset import Item
from llm2clip.errors import BundleError
from llm2clip.hashing import sha256_file

log = logging.getLogger(__name__)

SHARD_FORMAT = "llm2clip-index-shards"
SHARD_FORMAT_VERSION = 1
KEY_FILE = "key.json"
TMP_SUFFIX = ".tmp"


def work_dir(target: str | Path) -> Path:
    """Where a build of ``target`` keeps its shards: a sibling, so it shares the target's file system."""
    target = Path(target)
    return target.with_name(f"{target.name}.partial")


@contextlib.contextmanager
def target_lock(target: str | Path) -> Iterator[None]:
    """Held while a command builds or adds to ``target``; a second one is refused rather than interleaved (two
    adds would each publish the old rows plus their own, losing the other's). The kernel drops the lock when
    the holder dies, so a killed build never leaves a stale one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.with_name(f".{target.name}.lock")
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BundleError(f"another `llm2clip index` command is writing {target}: wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write`` into a temporary sibling, flushed to disk, then renamed to ``path``: complete or absent."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def items_digest(items: Sequence[Item]) -> str:
    """sha256 of the items as the build sees them (ids, images, captions, meta, order): what shards are made of,
    for a dataset read from items.jsonl or assembled in memory alike."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item.to_json(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def image_signature(root: str | Path, items: Sequence[Item]) -> str:
    """sha256 of the size and modification time of each item's image: a cheap check that the images a shard was
    made from are unchanged (hashing their bytes would cost about as much as decoding them again)."""
    h = hashlib.sha256()
    for item in items:
        try:
            st = os.stat(Path(root) / item.image)
            h.update(f"{item.image}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # missing: the reader skips it, and the signature says so
            h.update(f"{item.image}\0-\n".encode())
    return h.hexdigest()


def shard_plan(count: int, shard_size: int) -> list[tuple[int, int]]:
    """(start, end) item ranges of the shards of a corpus of ``count`` items."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


@dataclass
class Shard:
    embeddings: np.ndarray  # float32 (rows, dim)
    rows: list[tuple[str, str]]  # (item id, caption key) of each embedding row, in order
    skipped: list[Skip]


class ShardStore:
    """The shards of one build in ``folder``, made under ``key``; shard files from another key are discarded
    when the store opens, and leftover temporary files (a shard being written when the build died) removed."""

    def __init__(self, folder: str | Path, key: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.key = {"format": SHARD_FORMAT, "format_version": SHARD_FORMAT_VERSION, **key}
        self.folder.mkdir(parents=True, exist_ok=True)
        old = self._old_key()
        if old != self.key:
            names = sorted(p.name for p in self.folder.glob("shard-*.json"))
            if names:
                differ = sorted(k for k in {*self.key, *(old or {})} if (old or {}).get(k) != self.key.get(k))
                log.warning("discarding %d shards in %s: they were made with other settings (%s)", len(names),
                            self.folder, ", ".join(differ) or "no key")
            self._clear()
            write_atomic(self.folder / KEY_FILE, lambda fh: fh.write(json.dumps(self.key, indent=2).encode()))
        for tmp in self.folder.glob(f"*{TMP_SUFFIX}"):
            log.info("removing %s: a shard being written when the last build stopped", tmp.name)
            tmp.unlink()

    def _old_key(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / KEY_FILE).read_text())
        except (OSError, ValueError):
            return None

    def _clear(self) -> None:
        for path in self.folder.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def _paths(self, n: int) -> tuple[Path, Path]:
        return self.folder / f"shard-{n:05d}.npy", self.folder / f"shard-{n:05d}.json"

    def done(self, n: int, sources: str = "") -> bool:
        """Whether shard ``n`` is on disk, intact, and made from inputs with the signature ``sources``."""
        npy, meta = self._paths(n)
        if not (npy.is_file() and meta.is_file()):
            return False
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            return False
        if info.get("sources", "") != sources:
            log.warning("shard %d of %s is redone: its images changed since it was made", n, self.folder)
            return False
        return info.get("sha256") == sha256_file(npy)

    def save(self, n: int, shard: Shard, sources: str = "") -> None:
        """Shard ``n``: embeddings first, then the JSON that names their sha256 (a shard is done once it exists)."""
        emb = np.ascontiguousarray(shard.embeddings, dtype=np.float32)
        if len(emb) != len(shard.rows):
            raise ValueError(f"{len(emb)} embeddings for {len(shard.rows)} rows")
        npy, meta = self._paths(n)
        write_atomic(npy, lambda fh: np.save(fh, emb, allow_pickle=False))
        info = {
            "shard": n,
            "rows": [list(r) for r in shard.rows],
            "skipped": [[s.id, s.reason, s.detail] for s in shard.skipped],
            "sources": sources,
            "sha256": sha256_file(npy),
        }
        write_atomic(meta, lambda fh: fh.write(json.dumps(info).encode()))

    def load(self, n: int) -> Shard:
        npy, meta = self._paths(n)
        info = json.loads(meta.read_text())
        emb = np.load(npy, allow_pickle=False)
        if emb.dtype != np.float32 or emb.ndim != 2 or len(emb) != len(info["rows"]):
            raise BundleError(f"shard {npy} does not match its rows: delete {self.folder} and build again")
        return Shard(emb, [(i, k) for i, k in info["rows"]], [Skip(*s) for s in info["skipped"]])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


__all__ = ["Shard", "ShardStore", "image_signature", "items_digest", "shard_plan", "target_lock", "work_dir", "write_atomic"]
