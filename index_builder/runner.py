"""Runner: reader -> mapper -> writer, each stage handed in, each timed (clip-retrieval's shape).

The timings tell where a build spends its time: a large ``read_wait`` means decoding is the bottleneck
(add workers), a large ``encode`` means the model is (add threads or a GPU provider).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from index_builder import ray_engine
from index_builder.mapper import make_mapper
from index_builder.ray_engine import Precomputed, RayCfg, RayEncodedReader
from index_builder.reader import DEFAULT_MAX_PIXELS, Batch, CaptionReader, ImageReadCfg, ImageReader, Skip
from index_builder.writer import BundleWriter
from llm2clip import __version__
from llm2clip.bundle import ModelBundle, load_bundle
from llm2clip.data.dataset import Dataset, read_dataset
from llm2clip.encoders.base import DEFAULT_MAX_BATCH_TOKENS
from llm2clip.errors import BundleError
from llm2clip.index import MODALITIES, check_factory

log = logging.getLogger(__name__)

SKIP_EXAMPLES = 10
# captions handed to the text encoder at a time: it sorts them by length into token-budget batches, so a
# larger chunk wastes less padding; the progress bar moves a chunk at a time
TEXT_CHUNK = 512  # item ids kept in the manifest: enough to find the bad files, bounded for huge corpora


class Reader(Protocol):
    modality: str
    decode_seconds: float

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


class Writer(Protocol):
    def add(self, embeddings: np.ndarray, rows: Sequence[Any]) -> None: ...

    def finish(self, build: dict[str, Any]) -> dict[str, Any]: ...


@dataclass
class PipelineStats:
    rows: int = 0
    batches: int = 0
    skipped: list[Skip] = field(default_factory=list)
    read_wait_s: float = 0.0  # the consumer waiting on the reader: decode not hidden behind encoding
    encode_s: float = 0.0
    write_s: float = 0.0
    decode_s: float = 0.0  # decode + preprocess, summed over reader workers (overlaps the others)
    total_s: float = 0.0

    def skipped_summary(self) -> dict[str, Any]:
        reasons = Counter(s.reason for s in self.skipped)
        return {
            "count": len(self.skipped),
            "reasons": dict(sorted(reasons.items())),
            "examples": [s.id for s in self.skipped[:SKIP_EXAMPLES]],
        }

    def durations(self) -> dict[str, float]:
        return {
            "read_wait": round(self.read_wait_s, 4),
            "encode": round(self.encode_s, 4),
            "write": round(self.write_s, 4),
            "decode_workers": round(self.decode_s, 4),
            "total": round(self.total_s, 4),
        }


def run_pipeline(
    reader: Reader,
    mapper: Callable[[Any], np.ndarray],
    writer: Writer,
    progress: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> PipelineStats:
    """Drive every batch of ``reader`` through ``mapper`` into ``writer`` (not finished here); ``clock``
    times the stages."""
    stats = PipelineStats()
    modality = getattr(reader, "modality", "")
    # image progress counts items (skipped ones too, so the bar reaches its total); text counts captions
    unit = "item" if modality == "image" else "caption"
    bar = tqdm(total=len(reader), unit=unit, desc=f"index {modality}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    start = clock()
    batches: Iterator[Batch] = iter(reader)
    try:
        while True:
            t0 = clock()
            batch = next(batches, None)
            t1 = clock()
            stats.read_wait_s += t1 - t0
            if batch is None:
                break
            data, rows, skipped = batch
            for skip in skipped:
                (log.warning if len(stats.skipped) < SKIP_EXAMPLES else log.debug)(
                    "skipped item %r: %s %s", skip.id, skip.reason, skip.detail)
                stats.skipped.append(skip)
            embeddings = mapper(data)
            t2 = clock()
            writer.add(embeddings, rows)
            t3 = clock()
            stats.encode_s += t2 - t1
            stats.write_s += t3 - t2
            stats.rows += len(rows)
            stats.batches += 1
            bar.update(len(rows) + (len(skipped) if modality == "image" else 0))
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the reader's prefetch threads when a stage raised
        bar.close()
    stats.total_s = clock() - start
    stats.decode_s = float(getattr(reader, "decode_seconds", 0.0))
    return stats


@dataclass(frozen=True)
class BuildCfg:
    """How a build reads, embeds and indexes a corpus.

    Images: ``batch_size`` per encoder call, decoded by ``workers`` threads ``prefetch`` batches ahead,
    larger than ``max_pixels`` skipped. Captions: the ``captions`` named (``long``, ``short``, ``all`` or
    caption keys), handed to the text encoder ``text_chunk`` at a time, which sorts them into token-budget
    batches of ``max_batch_tokens``; ``precision`` picks its variant as the service does (``auto``: the
    best this machine runs). ``factory`` is the FAISS index factory string (None: by corpus size).
    ``engine``: ``local`` (this process) or ``ray`` (decode and encode on a Ray cluster, ``ray``)."""

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
    engine: str = "local"
    ray: RayCfg = RayCfg()

    def image_reading(self) -> ImageReadCfg:
        return ImageReadCfg(self.batch_size, self.workers, self.prefetch, self.max_pixels)


@dataclass(frozen=True)
class Built:
    """One index bundle a build wrote: its modality, folder and manifest."""

    modality: str
    path: Path
    manifest: dict[str, Any]


def _reader(ds: Dataset, mb: ModelBundle, modality: str, cfg: BuildCfg) -> ImageReader | CaptionReader:
    if modality == "image":
        return ImageReader(ds, mb.preprocess, cfg.image_reading())
    return CaptionReader(ds, captions=cfg.captions, batch_size=cfg.text_chunk)


def _ray_stages(ds: Dataset, mb: ModelBundle, modality: str, cfg: BuildCfg) -> tuple[Any, Any]:
    """Reader and mapper of a Ray build: Ray's actors decode and encode, the runner only collects. The text
    variant is chosen here once, so that every node encodes with the same one."""
    from llm2clip.encoders.select import choose_text_precision

    if modality == "image":
        return RayEncodedReader(ds, mb, modality, cfg, cfg.ray), Precomputed(None)
    precision = choose_text_precision(mb, cfg.precision)
    runtime = mb.text_variants.get(precision, {}).get("runtime", "onnxruntime")
    described = {"backend": runtime, "device": "ray", "precision": precision,
                 "max_batch_tokens": cfg.max_batch_tokens}
    return RayEncodedReader(ds, mb, modality, cfg, cfg.ray, precision), Precomputed(described)


def _build_record(ds: Dataset, mb: ModelBundle, modality: str, cfg: BuildCfg, stats: PipelineStats,
                  encoder: Any) -> dict[str, Any]:
    """The manifest's ``build`` section: where the rows came from and how they were made."""
    image = modality == "image"
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
        "skipped": stats.skipped_summary(),
        "durations_s": stats.durations(),
        "items_per_s": round(len(ds) / stats.total_s, 2) if stats.total_s > 0 else None,
        "llm2clip_version": __version__,
    }


def build_index(dataset: Dataset | str | Path, bundle: ModelBundle | str | Path, out: str | Path,
                modality: str, cfg: BuildCfg = BuildCfg(),
                mapper: Callable[[Any], np.ndarray] | None = None) -> dict[str, Any]:
    """Embed a dataset's images (``modality="image"``) or captions (``"text"``) into the index bundle
    ``out``; returns its manifest. Unusable images are skipped and counted in ``build.skipped``.

    ``mapper`` replaces the bundle's ONNX encoder (another runtime, or a test); it must embed into the
    bundle's space, since the manifest names the bundle's fingerprint."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'image' or 'text', not {modality!r}")
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    mb = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
    if cfg.engine == "ray":
        reader, mapper = _ray_stages(ds, mb, modality, cfg)
    else:
        reader = _reader(ds, mb, modality, cfg)
    if mapper is None:
        mapper = make_mapper(mb, modality, threads=cfg.threads, providers=cfg.providers,
                             precision=cfg.precision, max_batch_tokens=cfg.max_batch_tokens)
    writer = BundleWriter(out, modality, mb.embed_dim, mb.fingerprint, factory=cfg.factory)
    stats = run_pipeline(reader, mapper, writer, progress=cfg.progress)
    build = _build_record(ds, mb, modality, cfg, stats, getattr(mapper, "encoder", None))
    try:
        manifest = writer.finish(build)
    except RuntimeError as exc:
        if not cfg.factory:
            raise
        # e.g. an IVF index with more lists than the corpus has rows
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"FAISS could not build {cfg.factory!r} for this corpus: {first}") from None
    log.info("index %s: %d rows, %d skipped -> %s", modality, stats.rows, len(stats.skipped), out)
    return manifest


def build_indexes(dataset: Dataset | str | Path, bundle: ModelBundle | str | Path, out: str | Path,
                  cfg: BuildCfg = BuildCfg(), modality: str = "both") -> Iterator[Built]:
    """The index bundles the service loads, each yielded once written: ``modality="both"`` writes
    ``out/image`` (answers text queries) and ``out/text`` (answers image queries), ``"image"`` or
    ``"text"`` writes ``out`` itself. The dataset and model bundle are read and verified once."""
    if modality not in (*MODALITIES, "both"):
        raise ValueError(f"modality must be 'image', 'text' or 'both', not {modality!r}")
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    mb = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
    if cfg.factory:
        check_factory(cfg.factory, mb.embed_dim)
    out = Path(out)
    targets = [(m, out / m) for m in MODALITIES] if modality == "both" else [(modality, out)]
    started = cfg.engine == "ray" and ray_engine.connect(cfg.ray)
    try:
        for name, target in targets:
            yield Built(name, target, build_index(ds, mb, target, name, cfg))
    finally:
        if started:
            ray_engine.shutdown()


__all__ = ["BuildCfg", "Built", "PipelineStats", "build_index", "build_indexes", "run_pipeline"]
