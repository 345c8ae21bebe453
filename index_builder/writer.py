"""Writer stage: embeddings + reader rows -> index bundle rows (FAISS vectors and items.sqlite records)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index_builder.reader import Row
from llm2clip.index import IndexBuildCfg, IndexWriter, Record


def to_record(row: Row) -> Record:
    """What the service answers for a hit: the item, its image (relative to the corpus root) and the
    caption the row embeds (text index) or the item's long caption (image index)."""
    item = row.item
    return Record(
        id=item.id,
        uri=item.image,
        caption=item.captions[row.caption_key],
        caption_key=row.caption_key,
        meta=item.meta,
    )


class RowCollector:
    """A writer stage that keeps what it is given: the rows of one shard, or of one incremental add."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._embeddings: list[np.ndarray] = []
        self.rows: list[Row] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, embeddings: np.ndarray, rows: Sequence[Row]) -> None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape != (len(rows), self.dim):
            raise ValueError(f"expected ({len(rows)}, {self.dim}) embeddings, got {embeddings.shape}")
        self._embeddings.append(embeddings)
        self.rows.extend(rows)

    def embeddings(self) -> np.ndarray:
        return np.concatenate(self._embeddings) if self._embeddings else np.zeros((0, self.dim), np.float32)


class BundleWriter:
    """Adds rows batch by batch; ``finish`` writes the index bundle atomically (a half-built index is
    never visible at ``target``)."""

    def __init__(self, target: str | Path, modality: str, dim: int, model_fingerprint: str,
                 factory: str | None = None, index_cfg: IndexBuildCfg | None = None) -> None:
        self.target = Path(target)
        self.factory = factory
        self.index_cfg = index_cfg  # how the FAISS index is chosen and tuned (None: the defaults)
        self._writer = IndexWriter(self.target, modality, dim, model_fingerprint)

    def __len__(self) -> int:
        return len(self._writer)

    def add(self, embeddings: np.ndarray, rows: Sequence[Row]) -> None:
        if len(rows) == 0:
            return
        self._writer.add(embeddings, [to_record(r) for r in rows])

    def finish(self, build: dict[str, Any]) -> dict[str, Any]:
        """Builds the FAISS index, writes the bundle; returns its manifest."""
        return self._writer.write(build=build, factory=self.factory, cfg=self.index_cfg)


__all__ = ["BundleWriter", "RowCollector", "to_record"]
