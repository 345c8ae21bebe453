"""Mapper stage: a reader batch -> unit float32 embeddings (B, dim), with the bundle's encoders.

The index is built with the same runtime, files and precision choice the service makes (the text encoder
variant by ``precision``, ``auto`` by default), so that a query embedded by the service lands in the space
the index was built in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm2clip.bundle import ModelBundle
from llm2clip.encoders.base import DEFAULT_MAX_BATCH_TOKENS, BatchLimits, ImageEncoder, TextEncoder


class ImageMapper:
    modality = "image"

    def __init__(self, encoder: ImageEncoder) -> None:
        self.encoder = encoder
        self.dim = encoder.dim

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:  # every image of the batch was skipped
            return np.zeros((0, self.dim), np.float32)
        return self.encoder.encode_pixels(pixels)


class TextMapper:
    modality = "text"

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.dim = encoder.dim

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        # the encoder sorts the chunk by token count into token-budget batches
        return self.encoder.encode(list(texts))


def make_mapper(
    bundle: ModelBundle,
    modality: str,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    precision: str = "auto",
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
) -> ImageMapper | TextMapper:
    """The mapper of one modality; only that modality's encoder is loaded."""
    from llm2clip.encoders import load_image_encoder, load_text_encoder

    if modality == "image":
        return ImageMapper(load_image_encoder(bundle, providers=providers, threads=threads))
    if modality == "text":
        return TextMapper(load_text_encoder(bundle, precision, providers=providers, threads=threads,
                                            limits=BatchLimits(max_batch_tokens=max_batch_tokens)))
    raise ValueError(f"modality must be 'image' or 'text', not {modality!r}")


__all__ = ["ImageMapper", "TextMapper", "make_mapper"]
