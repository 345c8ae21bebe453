"""The encoder interface every runtime implements (infinity's pre / core / post split)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from llm2clip.config import PreprocessCfg
from llm2clip.preprocess import preprocess_image
from llm2clip.tokenizer import Tokenizer


@dataclass
class TextBatch:
    input_ids: np.ndarray  # int64 (B, L), right padded
    attention_mask: np.ndarray  # int64 (B, L)
    truncated: np.ndarray  # bool (B,): the text had more than max_tokens tokens


class ImageEncoder(ABC):
    """PIL images -> unit float32 embeddings (B, dim)."""

    dim: int
    preprocess_cfg: PreprocessCfg

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


class TextEncoder(ABC):
    """Texts -> unit float32 embeddings (B, dim); texts longer than max_tokens are cut there."""

    dim: int
    tokenizer: Tokenizer

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        ids, mask, truncated = self.tokenizer(list(texts))
        return TextBatch(ids, mask, truncated)

    @abstractmethod
    def encode_tokens(self, batch: TextBatch) -> np.ndarray:
        """Token batch -> unit float32 (B, dim)."""

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # sorting by length keeps padding (wasted compute) small in each batch
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.encode_tokens(self.tokenize([texts[i] for i in idx]))
        return out

    def warmup(self) -> None:
        self.encode(["warm up"])


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
