"""The pipeline's stages and their driver: a reader's batches through a mapper into a writer, each stage timed
(clip-retrieval's shape). The timings tell where a build spends its time: a large ``read_wait`` means decoding
is the bottleneck (add workers), a large ``encode`` means the model is (add threads or a GPU provider)."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from index_builder.reader import Batch, Skip

log = logging.getLogger("index_builder.runner")  # the build's one logger: resume messages and skips alike

SKIP_EXAMPLES = 10


class Reader(Protocol):
    modality: str
    decode_seconds: float

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


class Writer(Protocol):
    def add(self, embeddings: np.ndarray, rows: Sequence[Any]) -> None: ...


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
    items: int = 0  # items embedded by this run (a resumed build skips those of the shards already done)
    resumed: int = 0  # shards a previous run had done

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


def progress_bar(total: int, modality: str, enabled: bool = True, initial: int = 0) -> tqdm:
    # image progress counts items (skipped ones too, so the bar reaches its total); text counts captions
    unit = "item" if modality == "image" else "caption"
    return tqdm(total=total, initial=initial, unit=unit, desc=f"index {modality}", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def run_pipeline(
    reader: Reader,
    mapper: Callable[[Any], np.ndarray],
    writer: Writer,
    progress: bool | tqdm = True,
    clock: Callable[[], float] = time.perf_counter,
    stats: PipelineStats | None = None,
) -> PipelineStats:
    """Drive every batch of ``reader`` through ``mapper`` into ``writer`` (not finished here); ``clock``
    times the stages. ``progress``: a bar of its own, none, or a bar shared with other runs; ``stats``: totals
    to add to (one per build, over its shards), a new one when None."""
    stats = stats if stats is not None else PipelineStats()
    modality = getattr(reader, "modality", "")
    own_bar = isinstance(progress, bool)
    bar = progress_bar(len(reader), modality, progress) if isinstance(progress, bool) else progress
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
        if own_bar:
            bar.close()
    stats.total_s += clock() - start
    stats.decode_s += float(getattr(reader, "decode_seconds", 0.0))
    return stats


__all__ = ["PipelineStats", "Reader", "Writer", "progress_bar", "run_pipeline"]
