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

from index_builder.mapper import make_mapper
from index_builder.reader import DEFAULT_MAX_PIXELS, Batch, CaptionReader, ImageReader, Skip
from index_builder.writer import BundleWriter
from llm2clip import __version__
from llm2clip.bundle import ModelBundle, load_bundle
from llm2clip.data.dataset import Dataset, read_dataset
from llm2clip.encoders.base import DEFAULT_MAX_BATCH_TOKENS

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
    desc: str | None = None,
) -> PipelineStats:
    """Drive every batch of ``reader`` through ``mapper`` into ``writer`` (not finished here)."""
    stats = PipelineStats()
    modality = getattr(reader, "modality", "")
    # image progress counts items (skipped ones too, so the bar reaches its total); text counts captions
    unit = "item" if modality == "image" else "caption"
    bar = tqdm(total=len(reader), unit=unit, desc=desc or f"index {modality}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    start = time.perf_counter()
    batches: Iterator[Batch] = iter(reader)
    try:
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            t1 = time.perf_counter()
            stats.read_wait_s += t1 - t0
            if batch is None:
                break
            data, rows, skipped = batch
            for skip in skipped:
                (log.warning if len(stats.skipped) < SKIP_EXAMPLES else log.debug)(
                    "skipped item %r: %s %s", skip.id, skip.reason, skip.detail)
                stats.skipped.append(skip)
            embeddings = mapper(data)
            t2 = time.perf_counter()
            writer.add(embeddings, rows)
            t3 = time.perf_counter()
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
    stats.total_s = time.perf_counter() - start
    stats.decode_s = float(getattr(reader, "decode_seconds", 0.0))
    return stats


def _as_dataset(dataset: Dataset | str | Path) -> tuple[Dataset, str]:
    if isinstance(dataset, Dataset):
        return dataset, str(dataset.root)
    return read_dataset(dataset), str(dataset)


def _as_bundle(bundle: ModelBundle | str | Path) -> ModelBundle:
    return bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)


def build_index(
    dataset: Dataset | str | Path,
    bundle: ModelBundle | str | Path,
    out: str | Path,
    modality: str,
    batch_size: int = 32,
    captions: Sequence[str] = ("long",),
    workers: int = 2,
    threads: int | None = None,
    progress: bool = True,
    *,
    factory: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    prefetch: int = 2,
    providers: Sequence[str] | None = None,
    mapper: Callable[[Any], np.ndarray] | None = None,
    precision: str = "auto",
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    text_chunk: int = TEXT_CHUNK,
) -> dict[str, Any]:
    """Embed a dataset's images (``modality="image"``) or captions (``"text"``) into the index bundle
    ``out``; returns its manifest. Unusable images are skipped and counted in ``build.skipped``.

    ``mapper`` replaces the bundle's ONNX encoder (another runtime, or a test); it must embed into the
    bundle's space, since the manifest names the bundle's fingerprint. ``precision`` picks the text encoder
    variant as the service does (``auto``: the best this machine runs); captions go to the encoder
    ``text_chunk`` at a time, which it sorts into token-budget batches of ``max_batch_tokens``."""
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', not {modality!r}")
    if isinstance(captions, str):
        captions = (captions,)
    ds, ds_path = _as_dataset(dataset)
    mb = _as_bundle(bundle)
    reader: ImageReader | CaptionReader
    if modality == "image":
        reader = ImageReader(ds, mb.preprocess, batch_size=batch_size, workers=workers, prefetch=prefetch,
                             max_pixels=max_pixels)
    else:
        reader = CaptionReader(ds, captions=captions, batch_size=text_chunk)
    if mapper is None:
        mapper = make_mapper(mb, modality, threads=threads, providers=providers, precision=precision,
                             max_batch_tokens=max_batch_tokens)
    encoder = getattr(mapper, "encoder", None)
    writer = BundleWriter(out, modality, mb.embed_dim, mb.fingerprint, factory=factory)
    stats = run_pipeline(reader, mapper, writer, progress=progress)
    build = {
        "dataset": str(Path(ds_path).absolute()),
        # the service serves item images from here: uris in items.sqlite are relative to it
        "corpus_root": str(Path(ds.root).resolve()),
        "items": len(ds),
        "rows": stats.rows,
        # an image row stores the item's long caption; a text row stores the caption it embeds
        "captions": list(captions) if modality == "text" else ["long"],
        "batch_size": batch_size if modality == "image" else None,
        "text_encoder": encoder.describe() if modality == "text" and hasattr(encoder, "describe") else None,
        "workers": workers if modality == "image" else None,
        "threads": threads,
        "max_pixels": max_pixels if modality == "image" else None,
        "model_fingerprint": mb.fingerprint,
        "skipped": stats.skipped_summary(),
        "durations_s": stats.durations(),
        "items_per_s": round(len(ds) / stats.total_s, 2) if stats.total_s > 0 else None,
        "llm2clip_version": __version__,
    }
    manifest = writer.finish(build)
    log.info("index %s: %d rows, %d skipped -> %s", modality, stats.rows, len(stats.skipped), out)
    return manifest


def build_indexes(
    dataset: Dataset | str | Path,
    bundle: ModelBundle | str | Path,
    out: str | Path,
    batch_size: int = 32,
    captions: Sequence[str] = ("long",),
    workers: int = 2,
    threads: int | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Both bundles the service loads: ``out/image`` (answers text queries) and ``out/text`` (answers
    image queries). The dataset and model bundle are read and verified once."""
    ds, _ = _as_dataset(dataset)
    mb = _as_bundle(bundle)
    out = Path(out)
    return {
        modality: build_index(ds, mb, out / modality, modality, batch_size=batch_size, captions=captions,
                              workers=workers, threads=threads, progress=progress, **kwargs)
        for modality in ("image", "text")
    }


__all__ = ["PipelineStats", "build_index", "build_indexes", "run_pipeline"]
