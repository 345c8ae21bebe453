"""Mapper stage: a reader batch -> unit float32 embeddings (B, dim), with the bundle's ONNX encoders.

The index is built with the same runtime and the same files the service loads, so that a query embedded
by the service lands in the space the index was built in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm2clip.bundle import ModelBundle
from llm2clip.encoders.base import ImageEncoder, TextEncoder


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

    def __init__(self, encoder: TextEncoder, batch_size: int = 32) -> None:
        self.encoder = encoder
        self.dim = encoder.dim
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.encoder.encode(list(texts), batch_size=self.batch_size)


def make_mapper(
    bundle: ModelBundle,
    modality: str,
    batch_size: int = 32,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> ImageMapper | TextMapper:
    """The mapper of one modality; only that modality's ONNX session is created."""
    from llm2clip.encoders.onnx import OnnxImageEncoder, OnnxTextEncoder

    if modality == "image":
        return ImageMapper(OnnxImageEncoder(bundle, providers, threads))
    if modality == "text":
        return TextMapper(OnnxTextEncoder(bundle, providers, threads), batch_size)
    raise ValueError(f"modality must be 'image' or 'text', not {modality!r}")


__all__ = ["ImageMapper", "TextMapper", "make_mapper"]
