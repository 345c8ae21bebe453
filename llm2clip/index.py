"""The index bundle: a FAISS index over unit embeddings plus the items its rows stand for.

A folder with ``manifest.json`` (modality, count, dim, FAISS factory string, metric, search parameters,
model bundle fingerprint, build parameters, sha256 of files), ``index.faiss`` and ``items.sqlite``
(row -> item id, uri, caption, meta). Written to a staging folder and renamed into place.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm2clip.bundle import MANIFEST, publish, read_manifest, staging_dir, verify_files, write_manifest
from llm2clip.errors import BundleError, require_runtime
from llm2clip.manifest import ManifestField

FORMAT = "llm2clip-index-bundle"
FORMAT_VERSION = 1
log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
ITEMS_DB = "items.sqlite"
MODALITIES = ("image", "text")

_SCHEMA = """
CREATE TABLE items (
    row INTEGER PRIMARY KEY,   -- FAISS row id
    id TEXT NOT NULL,          -- dataset item id (several caption rows may share one)
    uri TEXT,                  -- image path relative to the corpus root
    caption TEXT,              -- the caption this row embeds (text index) or the item's long caption
    caption_key TEXT,          -- which caption of the item ("long", "short", ...)
    meta TEXT                  -- JSON
);
CREATE INDEX items_id ON items(id);
"""


def _faiss():
    faiss = require_runtime("faiss")

    # below this many queries FAISS skips BLAS; small batches are the service's normal case and BLAS is
    # ~10x faster there on this class of CPU (measured in DESIGN.md)
    faiss.cvar.distance_compute_blas_threshold = 16
    return faiss


def choose_factory(count: int) -> str:
    """Exact search while it is cheap; HNSW beyond (the service keeps the whole index in memory)."""
    if count <= 200_000:
        return "Flat"
    return "HNSW32,Flat"


def check_factory(factory: str, dim: int) -> None:
    """Raises BundleError unless FAISS can make an index of ``dim`` from the factory string ``factory``."""
    faiss = _faiss()
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        raise BundleError(f"{factory!r} is not a FAISS index factory string (e.g. Flat, HNSW32,Flat, "
                          "IVF256,Flat)") from None


@dataclass
class Record:
    id: str
    uri: str | None
    caption: str | None
    caption_key: str | None = None
    meta: dict[str, Any] | None = None


class IndexWriter:
    """Collects (embedding, record) rows, then writes one index bundle atomically."""

    def __init__(self, target: str | Path, modality: str, dim: int, model_fingerprint: str) -> None:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}")
        self.target = Path(target)
        self.modality = modality
        self.dim = dim
        self.model_fingerprint = model_fingerprint
        self._vectors: list[np.ndarray] = []
        self._records: list[Record] = []

    def add(self, embeddings: np.ndarray, records: list[Record]) -> None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim or len(embeddings) != len(records):
            raise ValueError(f"expected ({len(records)}, {self.dim}) embeddings, got {embeddings.shape}")
        self._vectors.append(embeddings)
        self._records.extend(records)

    def __len__(self) -> int:
        return len(self._records)

    def write(self, build: dict[str, Any] | None = None, factory: str | None = None) -> dict[str, Any]:
        faiss = _faiss()
        if not self._records:
            raise BundleError("nothing to index: every item was skipped or the corpus is empty")
        # add() keeps vectors and records in step: records present means vectors present
        vectors = np.concatenate(self._vectors)
        factory = factory or choose_factory(len(vectors))
        index = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        search_params: dict[str, Any] = {}
        if factory.startswith("HNSW"):
            search_params["efSearch"] = 128
        stage = staging_dir(self.target)
        try:
            faiss.write_index(index, str(stage / INDEX_FILE))
            db = sqlite3.connect(stage / ITEMS_DB)
            db.executescript(_SCHEMA)
            db.executemany(
                "INSERT INTO items(row, id, uri, caption, caption_key, meta) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (i, r.id, r.uri, r.caption, r.caption_key, json.dumps(r.meta or {}, sort_keys=True))
                    for i, r in enumerate(self._records)
                ),
            )
            db.commit()
            db.close()
            manifest = write_manifest(
                stage,
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "modality": self.modality,
                    "count": int(index.ntotal),
                    "dim": self.dim,
                    "factory": factory,
                    "metric": "inner_product",
                    "normalized": True,
                    "search_params": search_params,
                    "model_fingerprint": self.model_fingerprint,
                    "build": build or {},
                },
            )
            publish(stage, self.target)
        except BaseException:
            import shutil

            shutil.rmtree(stage, ignore_errors=True)
            raise
        return manifest


class IndexBundle:
    """A loaded index bundle; safe to search from several threads at once."""

    def __init__(self, path: Path, manifest: dict[str, Any], index: Any, db: sqlite3.Connection,
                 device: str = "cpu") -> None:
        self.path = path
        self.manifest = manifest
        self.index = index
        self.device = device  # "cpu", or "gpu" when FAISS holds the index on a GPU
        self._db = db
        self._db_lock = threading.Lock()

    modality = ManifestField("modality", kind=str)
    count = ManifestField("count", kind=int)
    dim = ManifestField("dim", kind=int)
    model_fingerprint = ManifestField("model_fingerprint", kind=str)

    def check_model(self, model_fingerprint: str) -> None:
        if model_fingerprint != self.model_fingerprint:
            raise BundleError(
                f"index {self.path} was built with model bundle {self.model_fingerprint[:12]}, but the loaded "
                f"model bundle is {model_fingerprint[:12]}: rebuild the index with `llm2clip index build` "
                "using this model, or serve the model it was built with"
            )

    def search(self, queries: np.ndarray, k: int, params: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores (n, k'), rows (n, k')) with k' = min(k, count); parameters are per call, never set
        on the shared index."""
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(int(k), self.count))
        merged = {**self.manifest.get("search_params", {}), **(params or {})}
        sp = None
        if "efSearch" in merged and hasattr(faiss, "SearchParametersHNSW"):
            sp = faiss.SearchParametersHNSW(efSearch=int(merged["efSearch"]))
        elif "nprobe" in merged:
            sp = faiss.SearchParametersIVF(nprobe=int(merged["nprobe"]))
        scores, rows = self.index.search(queries, k, params=sp) if sp is not None else self.index.search(queries, k)
        return scores, rows

    def records(self, rows: list[int]) -> list[Record]:
        wanted = [int(r) for r in rows if r >= 0]
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))
        with self._db_lock:
            cur = self._db.execute(
                f"SELECT row, id, uri, caption, caption_key, meta FROM items WHERE row IN ({marks})", wanted
            )
            found = {row: Record(id=i, uri=u, caption=c, caption_key=ck, meta=json.loads(m or "{}"))
                     for row, i, u, c, ck, m in cur.fetchall()}
        return [found[r] for r in wanted if r in found]

    def reconstruct_all(self) -> np.ndarray:
        """Every stored vector, in row order (flat indexes only)."""
        return self.index.reconstruct_n(0, self.index.ntotal)

    def close(self) -> None:
        with self._db_lock:
            self._db.close()


def gpu_count() -> int:
    """GPUs this FAISS build can use (0 for faiss-cpu)."""
    faiss = _faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def _to_gpu(index: Any, folder: Path, device: str) -> tuple[Any, str]:
    """The index on GPU 0 when ``device`` allows and this FAISS build and index type support it."""
    if device == "cpu":
        return index, "cpu"
    gpus = gpu_count()
    if gpus == 0:
        if device == "gpu":
            raise BundleError("index device gpu asked for, but this FAISS build sees no GPU: install "
                              "faiss-gpu-cu12 on a CUDA machine, or set the index device to auto or cpu")
        return index, "cpu"
    faiss = _faiss()
    try:
        moved = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except RuntimeError as exc:  # e.g. HNSW, which FAISS has no GPU version of
        if device == "gpu":
            raise BundleError(f"index {folder} cannot move to the GPU ({str(exc).strip().splitlines()[-1]})") from None
        log.info("index %s stays on the CPU: FAISS has no GPU version of %s", folder, type(index).__name__)
        return index, "cpu"
    return moved, "gpu"


def load_index(folder: str | Path, verify: bool = True, device: str = "auto") -> IndexBundle:
    """Read and check an index bundle. ``device``: auto (a GPU when FAISS has one and the index type has a
    GPU version, else the CPU), gpu (refuse to fall back) or cpu."""
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu, not {device!r}")
    folder = Path(folder)
    manifest = read_manifest(folder, "index bundle", FORMAT)
    if manifest.get("modality") not in MODALITIES:
        raise BundleError(f"index bundle {folder}: unknown modality {manifest.get('modality')!r}")
    verify_files(folder, manifest, "index bundle", deep=verify)
    faiss = _faiss()
    try:
        index = faiss.read_index(str(folder / INDEX_FILE))
    except RuntimeError:
        raise BundleError(f"index bundle {folder}: {INDEX_FILE} cannot be read; rebuild the index") from None
    if index.ntotal != int(manifest["count"]) or index.d != int(manifest["dim"]):
        raise BundleError(f"index bundle {folder}: index.faiss does not match its manifest; rebuild it")
    index, placed = _to_gpu(index, folder, device)
    log.info("index %s (%s, %d rows) searched on the %s", folder, manifest.get("factory"), index.ntotal, placed)
    db = sqlite3.connect(f"file:{(folder / ITEMS_DB).resolve()}?mode=ro", uri=True, check_same_thread=False)
    return IndexBundle(folder, manifest, index, db, placed)


__all__ = ["MANIFEST", "MODALITIES", "IndexBundle", "IndexWriter", "Record", "check_factory", "choose_factory",
           "load_index"]
