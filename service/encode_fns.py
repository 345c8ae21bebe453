"""What the batchers carry and run: tokenized texts, their embeddings, and the batch functions around the
encoders (service/batching.py forms the batches)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llm2clip.encoders import ImageEncoder, TextEncoder
from llm2clip.encoders.base import pad_batch, plan_batches


@dataclass
class TokenizedText:
    """A text after the tokenizer, before the encoder: what the text batcher queues."""

    ids: np.ndarray  # int64 token ids, unpadded, already cut at max_tokens
    truncated: bool  # the text had more than max_tokens tokens


@dataclass
class TextEmbedding:
    vector: np.ndarray  # unit float32 (dim,)
    tokens: int  # tokens the encoder saw (after truncation)
    truncated: bool  # the text had more than max_tokens tokens


def text_cost(item: TokenizedText) -> int:
    return len(item.ids)


def text_plan(max_batch_tokens: int, max_batch_size: int) -> Callable[[list[TokenizedText]], list[Sequence[int]]]:
    """Encoder calls for a round of texts: by length, each padded call under the token budget."""

    def plan(items: list[TokenizedText]) -> list[Sequence[int]]:
        return list(plan_batches([len(t.ids) for t in items], max_batch_tokens, max_batch_size))

    return plan


def text_batch_fn(encoder: TextEncoder) -> Callable[[list[TokenizedText]], list[TextEmbedding]]:
    """Items are tokenized already (in the request's thread): the single worker only pads and encodes."""

    def encode(items: list[TokenizedText]) -> list[TextEmbedding]:
        batch = pad_batch([t.ids for t in items], encoder.pad_id, [t.truncated for t in items])
        vectors = encoder.encode_tokens(batch)
        return [TextEmbedding(vectors[i], len(t.ids), t.truncated) for i, t in enumerate(items)]

    return encode


def image_batch_fn(encoder: ImageEncoder) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Items are preprocessed pixels (3, S, S): decoding and resizing run in the request's own thread, in
    parallel, so the single worker spends its time in the encoder."""

    def encode(pixels: list[np.ndarray]) -> list[np.ndarray]:
        return list(encoder.encode_pixels(np.stack(pixels)))

    return encode
