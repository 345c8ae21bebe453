"""Runner: a dataset and a model bundle -> index bundles, through the pipeline (pipeline.py), a shard at a time
(shards.py), the FAISS index chosen and tuned by llm2clip.index, and the manifest's record of the build."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from index_builder import ray_engine
from index_builder.mapper import make_mapper
from index_builder.pipeline import PipelineStats, Reader, progress_bar, run_pipeline
from index_builder.ray_engine import RayCfg
from index_builder.reader import (
    DEFAULT_MAX_PIXELS,
    CaptionReader,
    ImageReadCfg,
    ImageReader,
    Row,
    Skip,
)
from index_builder.shards import (
    Shard,
    ShardStore,
    image_signature,
    items_digest,
    shard_plan,
    target_lock,
    work_dir,
)
from index_builder.writer import BundleWriter, RowCollector
from llm2clip import __version__
from llm2clip.bundle import ModelBundle, load_bundle
from llm2clip.data.dataset import Dataset, read_dataset
from llm2clip.encoders.base import DEFAULT_MAX_BATCH_TOKENS
from llm2clip.errors import BundleError
from llm2clip.index import MODALITIES, IndexBuildCfg, check_factory

log = logging.getLogger(__name__)

# captions handed to the text encoder at a time: it sorts them by length into token-budget batches, so a
# larger chunk wastes less padding; the progress bar moves a chunk at a time
TEXT_CHUNK = 512  # item ids kept in the manifest: enough to find the bad files, bounded for huge corpora
# items a shard: the unit a killed build resumes from. A multiple of the batch sizes, so that a sharded build
# batches as an unsharded one would; large enough that the reader's pause at each shard's start is noise.
DEFAULT_SHARD_SIZE = 4096


@dataclass(frozen=True)
class BuildCfg:
    """How a build reads, embeds and indexes a corpus.

    Images: ``batch_size`` per encoder call, decoded by ``workers`` threads ``prefetch`` batches ahead,
    larger than ``max_pixels`` skipped. Captions: the ``captions`` named (``long``, ``short``, ``all`` or
    caption keys), handed to the text encoder ``text_chunk`` at a time, which sorts them into token-budget
    batches of ``max_batch_tokens``; ``precision`` picks its variant as the service does (``auto``: the
    best this machine runs). ``factory`` is the FAISS index factory string (None: by corpus size). The corpus
    is embedded ``shard_size`` items at a time, each shard saved beside the target (see shards.py)."""

    batch_size: int = 32
    captions: tuple[str, ...] = ("long",)
    workers: int = 2
    threads: int | None = None
    progress: bool = True
    factory: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    prefetch: int = 2
    providers: tuple[str, ...] | None = None
    precision: str = "auto"
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    text_chunk: int = TEXT_CHUNK
    shard_size: int = DEFAULT_SHARD_SIZE  # items a shard in the work folder: what a killed build resumes from
    keep_shards: bool = False  # leave the work folder once the bundle is written (build_indexes: until the last)
    engine: str = "local"  # or "ray": shards decoded and encoded on a Ray cluster (ray_engine.py)
    ray: RayCfg = RayCfg()
    index: IndexBuildCfg = field(default_factory=IndexBuildCfg)  # the FAISS index: memory budget, recall target

    def image_reading(self) -> ImageReadCfg:
        return ImageReadCfg(self.batch_size, self.workers, self.prefetch, self.max_pixels)


@dataclass(frozen=True)
class Built:
    """One index bundle a build wrote: its modality, folder and manifest."""

    modality: str
    path: Path
    manifest: dict[str, Any]


def make_reader(ds: Dataset, mb: ModelBundle, modality: str, cfg: BuildCfg) -> Reader:
    if cfg.engine == "ray":
        return ray_engine.RayEncodedReader(ds, mb, modality, cfg, cfg.ray, cfg.precision)
    if modality == "image":
        return ImageReader(ds, mb.preprocess, cfg.image_reading())
    return CaptionReader(ds, captions=cfg.captions, batch_size=cfg.text_chunk)


@dataclass
class _Job:
    """One index build: its inputs, the shards it embeds the corpus in, and where they are kept."""

    ds: Dataset
    mb: ModelBundle
    modality: str
    cfg: BuildCfg
    mapper: Callable[[Any], np.ndarray]
    target: Path

    def __post_init__(self) -> None:
        self.plan = shard_plan(len(self.ds), self.cfg.shard_size)
        self.store: ShardStore | None = None

    def shard(self, n: int) -> Dataset:
        start, end = self.plan[n]
        return Dataset(self.ds.root, self.ds.items[start:end])

    def sources(self, part: Dataset) -> str:
        """What a shard depends on beyond the key: the image files (captions are in the items, so in the key)."""
        return image_signature(part.root, part.items) if self.modality == "image" else ""

    def key(self) -> dict[str, Any]:
        """What the shards are made from: a build with another key must not reuse them."""
        image = self.modality == "image"
        encoder = getattr(self.mapper, "encoder", None)
        cfg = self.cfg
        return {
            "dataset": str(Path(self.ds.root).resolve()),
            "items": {"count": len(self.ds), "sha256": items_digest(self.ds.items)},
            "model_fingerprint": self.mb.fingerprint,
            "modality": self.modality,
            "captions": ["long"] if image else list(cfg.captions),
            # the variant, runtime and device the vectors come from (the precision `auto` resolved to)
            "encoder": encoder.describe() if hasattr(encoder, "describe") else {"mapper": type(self.mapper).__qualname__},
            # batch composition moves the last bits of a vector; max_pixels decides which images are skipped
            "batching": ({"batch_size": cfg.batch_size, "max_pixels": cfg.max_pixels} if image
                         else {"text_chunk": cfg.text_chunk}),
            "shard_size": cfg.shard_size,
        }


def _encode_shards(job: _Job, store: ShardStore) -> PipelineStats:
    """Embed every shard not on disk yet, saving each as it is done; the bar starts at the shards done."""
    parts = [job.shard(n) for n in range(len(job.plan))]
    sources = [job.sources(part) for part in parts]
    todo = [n for n, src in enumerate(sources) if not store.done(n, src)]
    readers = [make_reader(part, job.mb, job.modality, job.cfg) for part in parts]
    stats = PipelineStats(resumed=len(job.plan) - len(todo))
    if stats.resumed:
        log.warning("resuming: %d of %d shards done (%s)", stats.resumed, len(job.plan), store.folder)
    total = sum(len(r) for r in readers)
    bar = progress_bar(total, job.modality, job.cfg.progress, total - sum(len(readers[n]) for n in todo))
    try:
        for n in todo:
            collector = RowCollector(job.mb.embed_dim)
            before = len(stats.skipped)
            run_pipeline(readers[n], job.mapper, collector, progress=bar, stats=stats)
            rows = [(row.item.id, row.caption_key) for row in collector.rows]
            store.save(n, Shard(collector.embeddings(), rows, stats.skipped[before:]), sources[n])
            stats.items += len(parts[n])
    finally:
        bar.close()
    return stats


def _assemble(job: _Job, store: ShardStore, stats: PipelineStats) -> dict[str, Any]:
    """Every shard's rows, in item order, through the bundle writer (the FAISS index is chosen there)."""
    t0 = time.perf_counter()
    writer = BundleWriter(job.target, job.modality, job.mb.embed_dim, job.mb.fingerprint, factory=job.cfg.factory,
                          index_cfg=job.cfg.index)
    skipped: list[Skip] = []
    for n in range(len(job.plan)):
        shard = store.load(n)
        items = {item.id: item for item in job.shard(n).items}
        try:
            rows = [Row(items[item_id], key) for item_id, key in shard.rows]
        except KeyError:
            raise BundleError(f"shard {n} in {store.folder} names items the dataset lacks: delete that folder "
                              "and build again") from None
        writer.add(shard.embeddings, rows)
        skipped.extend(shard.skipped)
    stats.skipped, stats.rows = skipped, len(writer)
    stats.write_s += time.perf_counter() - t0
    build = _build_record(job, stats)
    try:
        return writer.finish(build)
    except RuntimeError as exc:
        if not job.cfg.factory:
            raise
        # e.g. an IVF index with more lists than the corpus has rows
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"FAISS could not build {job.cfg.factory!r} for this corpus: {first}") from None


def _build_record(job: _Job, stats: PipelineStats) -> dict[str, Any]:
    """The manifest's ``build`` section: where the rows came from and how they were made."""
    ds, mb, cfg = job.ds, job.mb, job.cfg
    image = job.modality == "image"
    encoder = getattr(job.mapper, "encoder", None)
    return {
        "dataset": str(Path(ds.root).absolute()),
        # the service serves item images from here: uris in items.sqlite are relative to it
        "corpus_root": str(Path(ds.root).resolve()),
        "items": len(ds),
        "rows": stats.rows,
        # an image row stores the item's long caption; a text row stores the caption it embeds
        "captions": ["long"] if image else list(cfg.captions),
        "batch_size": cfg.batch_size if image else None,
        "text_encoder": encoder.describe() if not image and hasattr(encoder, "describe") else None,
        "workers": cfg.workers if image else None,
        "threads": cfg.threads,
        "engine": cfg.engine,
        "max_pixels": cfg.max_pixels if image else None,
        "model_fingerprint": mb.fingerprint,
        # where `llm2clip index add` finds the model when not told (used only while its fingerprint matches)
        "model_bundle": str(Path(mb.path).resolve()),
        "shards": {"size": cfg.shard_size, "count": len(job.plan), "resumed": stats.resumed},
        "skipped": stats.skipped_summary(),
        "durations_s": stats.durations(),
        "items_per_s": round(stats.items / stats.total_s, 2) if stats.total_s > 0 else None,
        "llm2clip_version": __version__,
    }


def build_index(dataset: Dataset | str | Path, bundle: ModelBundle | str | Path, out: str | Path,
                modality: str, cfg: BuildCfg = BuildCfg(),
                mapper: Callable[[Any], np.ndarray] | None = None) -> dict[str, Any]:
    """Embed a dataset's images (``modality="image"``) or captions (``"text"``) into the index bundle
    ``out``; returns its manifest. Unusable images are skipped and counted in ``build.skipped``.

    Resumable: the corpus is embedded ``cfg.shard_size`` items at a time into ``<out>.partial/``; a build
    killed at any point and run again with the same inputs embeds only the shards not saved yet and writes the
    bundle a clean build writes. ``mapper`` replaces the bundle's ONNX encoder (another runtime, or a test); it
    must embed into the bundle's space, since the manifest names the bundle's fingerprint."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'image' or 'text', not {modality!r}")
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    mb = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
    if cfg.engine == "ray":
        cfg, mapper = ray_engine.stages(mb, modality, cfg)
    if mapper is None:
        mapper = make_mapper(mb, modality, threads=cfg.threads, providers=cfg.providers,
                             precision=cfg.precision, max_batch_tokens=cfg.max_batch_tokens)
    job = _Job(ds, mb, modality, cfg, mapper, Path(out))
    t0 = time.perf_counter()
    with target_lock(job.target):
        store = ShardStore(work_dir(job.target), job.key())
        stats = _encode_shards(job, store)
        stats.total_s = time.perf_counter() - t0
        try:
            manifest = _assemble(job, store, stats)
        except Exception:
            log.warning("the embedded shards stay in %s: a rerun writes the index from them", store.folder)
            raise
        if not cfg.keep_shards:
            store.remove()
    log.info("index %s: %d rows, %d skipped -> %s", modality, stats.rows, len(stats.skipped), out)
    return manifest


def build_indexes(dataset: Dataset | str | Path, bundle: ModelBundle | str | Path, out: str | Path,
                  cfg: BuildCfg = BuildCfg(), modality: str = "both") -> Iterator[Built]:
    """The index bundles the service loads, each yielded once written: ``modality="both"`` writes
    ``out/image`` (answers text queries) and ``out/text`` (answers image queries), ``"image"`` or
    ``"text"`` writes ``out`` itself. The dataset and model bundle are read and verified once. The shards of
    each are kept until the last is written, so that a build killed during the text index does not embed the
    images again."""
    if modality not in (*MODALITIES, "both"):
        raise ValueError(f"modality must be 'image', 'text' or 'both', not {modality!r}")
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    mb = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
    if cfg.factory:
        check_factory(cfg.factory, mb.embed_dim)
    out = Path(out)
    targets = [(m, out / m) for m in MODALITIES] if modality == "both" else [(modality, out)]
    with ray_engine.session(cfg.ray, cfg.engine == "ray"):
        for n, (name, target) in enumerate(targets):
            last = n == len(targets) - 1
            yield Built(name, target, build_index(ds, mb, target, name, cfg if last else replace(cfg, keep_shards=True)))
    if not cfg.keep_shards:
        for _, target in targets[:-1]:
            shutil.rmtree(work_dir(target), ignore_errors=True)


__all__ = ["DEFAULT_SHARD_SIZE", "BuildCfg", "Built", "PipelineStats", "build_index", "build_indexes",
           "make_reader", "progress_bar", "run_pipeline"]
