"""The encoder interface every runtime implements (infinity's pre / core / post split).

Texts: ``tokenize`` (pre, no runtime involved) -> ``encode_tokens`` (core: the runtime) -> unit float32
rows (post). ``encode`` does the whole of it for any number of texts, in batches formed by a token budget
(text-embeddings-inference's max-batch-tokens): texts are sorted by token count and cut into batches whose
padded size (rows x longest row) stays under ``max_batch_tokens``, so short texts travel many to a batch and
long ones few, and padding (wasted compute) stays small. Every caller that embeds text (caption embedding
for stage 2, caption retrieval, evaluation, index builds, the service, the bench) goes through it, so the
same tokenisation, truncation, pooling and batching hold everywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from llm2clip.config import PreprocessCfg
from llm2clip.preprocess import preprocess_image
from llm2clip.tokenizer import Tokenizer

DEFAULT_MAX_BATCH_TOKENS = 4096  # padded tokens per encoder call: larger batches measured no faster on 2 cores
DEFAULT_MAX_BATCH_SIZE = 64


@dataclass(frozen=True)
class BatchLimits:
    """The token-budget batching of ``TextEncoder.encode``: padded tokens and rows per encoder call."""

    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE


@dataclass
class TextBatch:
    input_ids: np.ndarray  # int64 (B, L), right padded
    attention_mask: np.ndarray  # int64 (B, L)
    truncated: np.ndarray  # bool (B,): the text had more than max_tokens tokens

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int(self.attention_mask.sum())


def pad_batch(rows: Sequence[np.ndarray], pad_id: int, truncated: Sequence[bool] | None = None) -> TextBatch:
    """Token id rows of any lengths -> one right-padded batch."""
    width = max(1, max((len(r) for r in rows), default=1))
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    flags = np.zeros(len(rows), bool) if truncated is None else np.asarray(truncated, bool)
    return TextBatch(ids, mask, flags)


def plan_batches(lengths: Sequence[int], max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> list[np.ndarray]:
    """Indices of ``lengths`` grouped into batches, longest first, each with (rows x its longest row) at
    most ``max_batch_tokens`` and at most ``max_batch_size`` rows. A row longer than the budget goes alone.

    Longest first: the most expensive batch runs first, so a machine short of memory fails at once, and
    progress bars slow down rather than stall at the end."""
    if max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("max_batch_tokens and max_batch_size must be >= 1")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        width = max(1, int(lengths[order[start]]))  # the longest of this batch: sorted descending
        rows = max(1, min(max_batch_size, max_batch_tokens // width))
        batches.append(order[start : start + rows])
        start += rows
    return batches


class ImageEncoder(ABC):
    """PIL images -> unit float32 embeddings (B, dim)."""

    dim: int
    preprocess_cfg: PreprocessCfg
    backend: str = "?"
    precision: str = "fp32"
    device: str = "cpu"

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([preprocess_image(im, self.preprocess_cfg) for im in images])

    @abstractmethod
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed float32 (B, 3, S, S) -> unit float32 (B, dim)."""

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_pixels(self.preprocess(images))

    def warmup(self) -> None:
        size = self.preprocess_cfg.size
        self.encode_pixels(np.zeros((1, 3, size, size), np.float32))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "device": self.device}


class TextEncoder(ABC):
    """Texts -> float32 embeddings (B, dim), unit length when ``normalized``; texts longer than the
    tokenizer's ``max_tokens`` are cut there."""

    dim: int
    tokenizer: Tokenizer
    normalized: bool = True
    backend: str = "?"
    precision: str = "fp32"
    device: str = "cpu"
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE

    # pre ------------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        ids, mask, truncated = self.tokenizer(list(texts))
        return TextBatch(ids, mask, truncated)

    def tokenize_each(self, texts: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """Unpadded token ids per text and the truncation flags: what batches are formed from."""
        return self.tokenizer.ids(list(texts))

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    # core -----------------------------------------------------------------------------------------------
    @abstractmethod
    def encode_tokens(self, batch: TextBatch) -> np.ndarray:
        """Token batch -> float32 (B, dim): unit rows when ``normalized``."""

    # the whole path ---------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], progress: Callable[[int, int], Any] | None = None) -> np.ndarray:
        """Embeddings of ``texts`` in their order. ``progress(texts_done, tokens_done)`` is called after each
        batch with the counts of that batch (a tqdm bar's update, a tokens/s meter)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        rows, truncated = self.tokenize_each(texts)
        return self.encode_ids(rows, truncated, progress)

    def encode_ids(self, rows: Sequence[np.ndarray], truncated: Sequence[bool] | None = None,
                   progress: Callable[[int, int], Any] | None = None) -> np.ndarray:
        out = np.zeros((len(rows), self.dim), np.float32)
        flags = np.zeros(len(rows), bool) if truncated is None else np.asarray(truncated, bool)
        for idx in plan_batches([len(r) for r in rows], self.max_batch_tokens, self.max_batch_size):
            batch = pad_batch([rows[i] for i in idx], self.pad_id, flags[idx])
            out[idx] = self.encode_tokens(batch)
            if progress is not None:
                progress(len(idx), batch.tokens)
        return out

    def warmup(self) -> None:
        self.encode(["warm up"])

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "device": self.device,
                "max_batch_tokens": self.max_batch_tokens}


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
