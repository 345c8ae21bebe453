"""Incremental adds: the new items of a dataset appended to an index bundle, published as a new bundle version.

Ids stay stable: existing rows keep their row numbers, new rows follow them, and items whose id the index
already holds are neither embedded nor added again (an add never changes a row; rebuild to change items).
Copy-on-write: the bundle's files are copied into a staging folder, the FAISS index and items.sqlite grow
there, the result is checked as the service would load it, and it replaces the old folder in one rename; until
then, and after any failure, the old bundle is as it was. IVF indexes also get a drift check (drift.py).
"""

from __future__ import annotations

import copy
import json
import logging
import posixpath
import shutil
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from index_builder.drift import measure_drift
from index_builder.mapper import make_mapper
from index_builder.runner import BuildCfg, PipelineStats, make_reader, run_pipeline
from index_builder.shards import target_lock
from index_builder.writer import RowCollector, to_record
from llm2clip.bundle import (
    ModelBundle,
    load_bundle,
    publish,
    read_manifest,
    staging_dir,
    verify_files,
    write_manifest,
)
from llm2clip.data.dataset import Dataset, Item, read_dataset
from llm2clip.errors import BundleError, DatasetError, require_runtime
from llm2clip.index import FORMAT, INDEX_FILE, ITEMS_DB, MANIFEST, MODALITIES, Record, load_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Addition:
    """Rows to append: unit float32 vectors of the index's model, one record each, and where they came from
    (the manifest's history names it)."""

    vectors: np.ndarray
    records: Sequence[Record]
    source: str
    skipped: dict[str, Any] = field(default_factory=dict)
    encoder: dict[str, Any] | None = None


def read_index_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an intact index bundle: an add copies the bundle, so a damaged one is refused first."""
    manifest = read_manifest(folder, "index bundle", FORMAT)
    if manifest.get("modality") not in MODALITIES:
        raise BundleError(f"index bundle {folder}: unknown modality {manifest.get('modality')!r}")
    verify_files(folder, manifest, "index bundle", deep=True)
    return manifest


def check_model(folder: Path, manifest: dict[str, Any], fingerprint: str, given: str = "the model bundle given") -> None:
    built = str(manifest.get("model_fingerprint"))
    if fingerprint != built:
        raise BundleError(
            f"index {folder} was built with model bundle {built[:16]}, but {given} is {fingerprint[:16]}: vectors "
            "of two models are not comparable. Add with the model bundle the index was built with, or rebuild the "
            "index with `llm2clip index build` and the new model")


def existing_ids(folder: Path) -> set[str]:
    with sqlite3.connect(f"file:{(folder / ITEMS_DB).resolve()}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT DISTINCT id FROM items")}


def _copy_bundle(folder: Path, stage: Path) -> None:
    """Every file but the manifest (files this module does not know of travel too)."""
    for path in folder.iterdir():
        if path.name == MANIFEST:
            continue
        if path.is_dir():
            shutil.copytree(path, stage / path.name)
        else:
            shutil.copy2(path, stage / path.name)


def _append_items(db_path: Path, start: int, records: Sequence[Record]) -> None:
    db = sqlite3.connect(db_path)
    try:
        db.executemany(
            "INSERT INTO items(row, id, uri, caption, caption_key, meta) VALUES (?, ?, ?, ?, ?, ?)",
            ((start + i, r.id, r.uri, r.caption, r.caption_key, json.dumps(r.meta or {}, sort_keys=True))
             for i, r in enumerate(records)))
        db.commit()
    finally:
        db.close()


def _next_manifest(manifest: dict[str, Any], count: int, addition: Addition,
                   drift: dict[str, Any] | None) -> dict[str, Any]:
    """The old manifest's fields, with the new count, one more history entry and the drift measured."""
    new = copy.deepcopy(manifest)
    new["count"] = count
    build = new.setdefault("build", {})
    build.setdefault("history", []).append({
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "items_added": len({r.id for r in addition.records}),
        "rows_added": len(addition.records),
        "rows_before": int(manifest["count"]),
        "source": addition.source,
        "skipped": addition.skipped,
        "encoder": addition.encoder,
    })
    if drift is not None:
        new["drift"] = drift
    return new


def _append(folder: Path, manifest: dict[str, Any], addition: Addition) -> dict[str, Any]:
    """Copy-on-write append (the caller holds the target lock); returns the new manifest."""
    faiss = require_runtime("faiss")
    dim = int(manifest["dim"])
    vectors = np.ascontiguousarray(addition.vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise BundleError(f"index {folder} holds {dim}-dimensional vectors; the rows to add have shape "
                          f"{vectors.shape}: embed them with the model bundle the index was built with")
    if len(vectors) != len(addition.records):
        raise ValueError(f"{len(vectors)} vectors for {len(addition.records)} records")
    stage = staging_dir(folder)
    try:
        _copy_bundle(folder, stage)
        index = faiss.read_index(str(folder / INDEX_FILE))
        if index.d != dim or index.ntotal != int(manifest["count"]):
            raise BundleError(f"index bundle {folder}: index.faiss does not match its manifest; rebuild it")
        start = int(index.ntotal)
        drift = measure_drift(index, vectors, manifest.get("drift"))
        index.add(vectors)
        faiss.write_index(index, str(stage / INDEX_FILE))
        _append_items(stage / ITEMS_DB, start, addition.records)
        written = write_manifest(stage, _next_manifest(manifest, int(index.ntotal), addition, drift))
        load_index(stage, verify=True, device="cpu").close()  # what the service checks, before it can see it
        publish(stage, folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if drift and drift["needs_retrain"]:
        log.warning("index %s needs retraining: %s; rebuild it with `llm2clip index build`", folder, drift["reason"])
    return written


def append_rows(index_dir: str | Path, addition: Addition, model_fingerprint: str) -> dict[str, Any]:
    """Append ``addition`` to the index bundle ``index_dir`` as a new bundle version; returns its manifest.
    Refuses vectors of another model (``model_fingerprint``), of another dimension, and ids already in the
    index (existing rows never change). Nothing to add publishes nothing."""
    folder = Path(index_dir)
    with target_lock(folder):
        manifest = read_index_manifest(folder)
        check_model(folder, manifest, model_fingerprint)
        if not addition.records:
            return manifest  # nothing to add: no new version
        taken = existing_ids(folder) & {r.id for r in addition.records}
        if taken:
            raise BundleError(f"index {folder} already holds {len(taken)} of these ids (e.g. {sorted(taken)[0]!r}): "
                              "an add never changes existing rows; rebuild the index to change items")
        return _append(folder, manifest, addition)


@dataclass(frozen=True)
class AddCfg:
    """How an add embeds the new items. Fields left None take the index's own settings, since the rows of one
    index must be made alike: ``modality`` and ``captions``, when given, must equal the index's; ``precision``
    (the text encoder variant) defaults to the one the index was built with."""

    modality: str | None = None
    captions: tuple[str, ...] | None = None
    precision: str | None = None
    batch_size: int = 32
    workers: int = 2
    threads: int | None = None
    progress: bool = True
    providers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AddResult:
    path: Path
    modality: str
    items_added: int  # items with at least one new row
    rows_added: int
    already: int  # items of the dataset the index already held
    skipped: dict[str, Any]  # new items that produced no row (unreadable images...), as in build.skipped
    manifest: dict[str, Any]  # the new version's, or the unchanged one's when nothing was added

    @property
    def drift(self) -> dict[str, Any] | None:
        return self.manifest.get("drift")


def _build_cfg(folder: Path, manifest: dict[str, Any], cfg: AddCfg) -> BuildCfg:
    """The settings the index was built with, checked against those asked for."""
    build = manifest.get("build", {})
    modality = manifest["modality"]
    if cfg.modality not in (None, modality):
        raise BundleError(f"index {folder} is a {modality} index, not {cfg.modality}: add to the {cfg.modality} "
                          "index instead, or leave out --modality")
    captions = tuple(build.get("captions") or ("long",))
    if cfg.captions is not None and tuple(cfg.captions) != captions:
        raise BundleError(f"index {folder} holds the captions {','.join(captions)}, not {','.join(cfg.captions)}: "
                          "rows of one index embed the same captions; leave out --captions, or rebuild")
    text_encoder = build.get("text_encoder") or {}
    built_precision = text_encoder.get("precision")
    if cfg.precision and built_precision and cfg.precision != built_precision:
        log.warning("index %s was built with the %s text encoder; adding with %s", folder, built_precision,
                    cfg.precision)
    return BuildCfg(batch_size=cfg.batch_size, captions=captions, workers=cfg.workers, threads=cfg.threads,
                    progress=cfg.progress, providers=cfg.providers,
                    precision=cfg.precision or built_precision or "auto",
                    max_pixels=build.get("max_pixels") or BuildCfg.max_pixels,
                    max_batch_tokens=text_encoder.get("max_batch_tokens") or BuildCfg.max_batch_tokens)


def _model(folder: Path, manifest: dict[str, Any], bundle: ModelBundle | str | Path | None) -> ModelBundle:
    """The model bundle given, or the one the build recorded, if it is still there and still the same model."""
    if bundle is not None:
        mb = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
        check_model(folder, manifest, mb.fingerprint, f"--model {mb.path}")
        return mb
    recorded = manifest.get("build", {}).get("model_bundle")
    if recorded and Path(recorded).is_dir():
        try:
            mb = load_bundle(recorded)
        except BundleError:
            mb = None
        if mb is not None and mb.fingerprint == manifest.get("model_fingerprint"):
            log.info("model bundle %s, recorded by the build of %s", recorded, folder)
            return mb
    raise BundleError(f"index {folder} names no model bundle that is still there with its fingerprint "
                      f"{str(manifest.get('model_fingerprint'))[:16]}: pass --model with the bundle it was built with")


def _uri_of(folder: Path, manifest: dict[str, Any], ds: Dataset) -> Callable[[Item], str]:
    """Image paths relative to the index's corpus root, which the service serves every image of the index from."""
    recorded = manifest.get("build", {}).get("corpus_root")
    if not recorded:
        return lambda item: item.image
    root, new_root = Path(recorded), Path(ds.root).resolve()
    if not new_root.is_relative_to(root):
        raise DatasetError(f"{ds.root} lies outside {root}, the corpus root of index {folder}: the service serves "
                           "an index's images from that one folder, so put the new items (items.jsonl and images) "
                           "in a folder under it, or rebuild the index")
    prefix = new_root.relative_to(root).as_posix()
    return lambda item: posixpath.normpath(posixpath.join(prefix, item.image))


def add_dataset(index_dir: str | Path, dataset: Dataset | str | Path, bundle: ModelBundle | str | Path | None = None,
                cfg: AddCfg = AddCfg(), mapper: Callable[[Any], np.ndarray] | None = None) -> AddResult:
    """Embed the items of ``dataset`` whose ids ``index_dir`` lacks and append them (``append_rows``); nothing is
    published when nothing is new. ``bundle``: the model bundle (None: the one the build recorded, if it is still
    there with the index's fingerprint); ``mapper`` replaces its encoder, as in ``build_index``."""
    folder = Path(index_dir)
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    with target_lock(folder):
        manifest = read_index_manifest(folder)
        build_cfg = _build_cfg(folder, manifest, cfg)
        uri = _uri_of(folder, manifest, ds)
        mb = _model(folder, manifest, bundle)
        have = existing_ids(folder)
        new = [item for item in ds.items if item.id not in have]
        result = AddResult(folder, manifest["modality"], 0, 0, len(ds) - len(new),
                           PipelineStats().skipped_summary(), manifest)
        if not new:
            return result
        if mapper is None:
            mapper = make_mapper(mb, manifest["modality"], threads=build_cfg.threads, providers=build_cfg.providers,
                                 precision=build_cfg.precision, max_batch_tokens=build_cfg.max_batch_tokens)
        collector = RowCollector(int(manifest["dim"]))
        stats = run_pipeline(make_reader(Dataset(ds.root, new), mb, manifest["modality"], build_cfg), mapper,
                             collector, progress=build_cfg.progress)
        records = [replace(to_record(row), uri=uri(row.item)) for row in collector.rows]
        result = replace(result, skipped=stats.skipped_summary())
        if not records:
            return result
        encoder = getattr(mapper, "encoder", None)
        addition = Addition(collector.embeddings(), records, str(Path(ds.root).resolve()), stats.skipped_summary(),
                            encoder.describe() if hasattr(encoder, "describe") else None)
        written = _append(folder, manifest, addition)
    return replace(result, items_added=len({r.id for r in records}), rows_added=len(records), manifest=written)


__all__ = ["AddCfg", "AddResult", "Addition", "add_dataset", "append_rows", "check_model", "existing_ids"]
