"""The index bundle: a FAISS index over unit embeddings plus the items its rows stand for.

A folder with ``manifest.json`` (modality, count, dim, FAISS factory string, metric, search parameters,
how they were tuned, model bundle fingerprint, build parameters, sha256 of files), ``index.faiss`` and
``items.sqlite`` (row -> item id, uri, caption, meta). Written to a staging folder and renamed into place.
The index type follows the corpus size and a memory budget (``index_choice``); its search parameter is tuned
to a recall target on held-out queries (``index_tuning``).
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
from llm2clip.errors import BundleError
from llm2clip.index_choice import IndexChoice, choose_index, estimate_bytes, memory_budget
from llm2clip.index_tuning import (
    Built,
    IndexBuildCfg,
    build_index,
    faiss_module,
    gpu_count,
    search,
    tune_index,
)
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

_faiss = faiss_module


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

    def write(self, build: dict[str, Any] | None = None, factory: str | None = None,
              cfg: IndexBuildCfg | None = None) -> dict[str, Any]:
        """Choose the index (or take ``factory``), train it on a sample, fill it, tune its search parameter to
        ``cfg.target_recall`` and write the bundle; returns its manifest."""
        cfg = cfg or IndexBuildCfg()
        if not self._records:
            raise BundleError("nothing to index: every item was skipped or the corpus is empty")
        # add() keeps vectors and records in step: records present means vectors present
        vectors = np.concatenate(self._vectors)
        choice = self._choose(len(vectors), factory, cfg)
        log.info("index %s: %s (%s)", self.target, choice.factory, choice.reason)
        built = build_index(vectors, choice.factory, cfg)
        search_params, tuning = tune_index(built, vectors, cfg)
        built.add_held_out(vectors)
        tuning["training"] = built.training
        tuning["chooser"] = {"reason": choice.reason, "memory_budget_bytes": choice.memory_budget_bytes,
                             "estimated_bytes": choice.estimated_bytes}
        return self._publish(built, choice.factory, search_params, tuning, build)

    def _choose(self, count: int, factory: str | None, cfg: IndexBuildCfg) -> IndexChoice:
        budget = memory_budget(cfg.memory_budget_bytes)
        auto = choose_index(count, self.dim, budget, cfg.memory_mappable)
        if not factory:
            return auto
        check_factory(factory, self.dim)
        return IndexChoice(factory, f"{factory} was given explicitly (the chooser would pick {auto.factory})",
                           estimate_bytes(factory, count, self.dim), budget)

    def _publish(self, built: Built, factory: str, search_params: dict[str, Any], tuning: dict[str, Any],
                 build: dict[str, Any] | None) -> dict[str, Any]:
        """Writes index and items in the index's row order (``built.order``) to a staging folder, then
        renames it into place."""
        faiss = _faiss()
        index = built.index
        stage = staging_dir(self.target)
        try:
            faiss.write_index(index, str(stage / INDEX_FILE))
            tuning["index_file_bytes"] = (stage / INDEX_FILE).stat().st_size
            db = sqlite3.connect(stage / ITEMS_DB)
            db.executescript(_SCHEMA)
            db.executemany(
                "INSERT INTO items(row, id, uri, caption, caption_key, meta) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (i, r.id, r.uri, r.caption, r.caption_key, json.dumps(r.meta or {}, sort_keys=True))
                    for i, r in enumerate(self._records[j] for j in built.order)
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
                    "tuning": tuning,
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
        self.mmapped = False  # IVF inverted lists memory-mapped from index.faiss (load_index(mmap=True))
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
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(int(k), self.count))
        merged = {**self.manifest.get("search_params", {}), **(params or {})}
        return search(self.index, queries, k, merged)

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


def load_index(folder: str | Path, verify: bool = True, device: str = "auto", mmap: bool = False) -> IndexBundle:
    """Read and check an index bundle. ``device``: auto (a GPU when FAISS has one and the index type has a
    GPU version, else the CPU), gpu (refuse to fall back) or cpu. ``mmap``: map an IVF index's inverted lists
    from disk instead of reading them (FAISS maps nothing else: other index types are read into memory, and a
    log line says so); pages then load as queries touch them and can be shared by processes on one host."""
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu, not {device!r}")
    folder = Path(folder)
    manifest = read_manifest(folder, "index bundle", FORMAT)
    if manifest.get("modality") not in MODALITIES:
        raise BundleError(f"index bundle {folder}: unknown modality {manifest.get('modality')!r}")
    verify_files(folder, manifest, "index bundle", deep=verify)
    index, mapped = _read_index(folder, mmap)
    if index.ntotal != int(manifest["count"]) or index.d != int(manifest["dim"]):
        raise BundleError(f"index bundle {folder}: index.faiss does not match its manifest; rebuild it")
    index, placed = _to_gpu(index, folder, device)
    log.info("index %s (%s, %d rows) searched on the %s", folder, manifest.get("factory"), index.ntotal, placed)
    db = sqlite3.connect(f"file:{(folder / ITEMS_DB).resolve()}?mode=ro", uri=True, check_same_thread=False)
    bundle = IndexBundle(folder, manifest, index, db, placed)
    bundle.mmapped = mapped
    return bundle


def _read_index(folder: Path, mmap: bool) -> tuple[Any, bool]:
    """(the index, whether its inverted lists are memory-mapped)."""
    faiss = _faiss()
    try:
        # IO_FLAG_MMAP applies to IVF inverted lists only; FAISS reads any other index type normally
        index = faiss.read_index(str(folder / INDEX_FILE), faiss.IO_FLAG_MMAP if mmap else 0)
    except RuntimeError:
        raise BundleError(f"index bundle {folder}: {INDEX_FILE} cannot be read; rebuild the index") from None
    if mmap:
        if faiss.try_extract_index_ivf(index) is not None:
            log.info("index %s: inverted lists memory-mapped from %s", folder, INDEX_FILE)
            return index, True
        else:
            log.info("index %s: mmap does not apply to %s (FAISS maps IVF inverted lists only): read into memory",
                     folder, type(faiss.downcast_index(index)).__name__)
    return index, False


__all__ = ["MANIFEST", "MODALITIES", "IndexBuildCfg", "IndexBundle", "IndexWriter", "Record", "check_factory",
           "gpu_count", "load_index"]
