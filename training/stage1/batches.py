"""Micro-batch m's loss in each phase: its texts through the model, in length chunks.

Gradient accumulation: each micro-batch is its own contrastive problem (its in-batch negatives only), the
losses are averaged over the ``grad_accum`` micro-batches of an optimizer step. Gathering the negatives of
all micro-batches would need GradCache-style caching of embeddings; on a CPU the simple form keeps memory
flat and the negatives' count is set by ``batch_size``. A MNTP micro-batch holds the same 2 x batch_size
texts a contrastive one does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llm2clip.text import LLMEncoder, Tokenizer, bidirectional_mask
from training.stage1.config import Stage1Cfg
from training.stage1.lora import base_of
from training.stage1.losses import MntpMasking, mntp_targets, same_text, supcon_loss
from training.stage1.views import ViewSampler


def length_chunks(lengths: list[int]) -> list[list[int]]:
    """Indices sorted by length, cut once where the padded token count is smallest (long vs short captions)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best, cut = len(order) * lengths[order[-1]], len(order)
    for c in range(1, len(order)):
        cost = c * lengths[order[c - 1]] + (len(order) - c) * lengths[order[-1]]
        if cost < best:
            best, cut = cost, c
    return [ch for ch in (order[:cut], order[cut:]) if ch]


def encode(enc: LLMEncoder, tok: Tokenizer, texts: list[str]) -> torch.Tensor:
    """Embeddings (N, D) of ``texts``, in their order, each chunk padded only to its own longest text."""
    ids, mask, _ = tok(texts)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    order, parts = [], []
    for chunk in length_chunks(mask.sum(axis=1).tolist()):
        width = int(mask[chunk].sum(axis=1).max())
        idx = torch.tensor(chunk)
        order.append(idx)
        parts.append(enc(ids_t[idx, :width], mask_t[idx, :width]).float())
    return torch.cat(parts)[torch.argsort(torch.cat(order))]


class ContrastiveLoss:
    """Micro-batch m -> the supervised contrastive loss of its views' embeddings."""

    def __init__(self, enc: LLMEncoder, tok: Tokenizer, sampler: ViewSampler, temperature: float) -> None:
        self.enc, self.tok, self.sampler, self.temperature = enc, tok, sampler, temperature

    def __call__(self, m: int) -> torch.Tensor:
        texts, labels = self.sampler(m)
        return supcon_loss(encode(self.enc, self.tok, texts), labels, self.temperature, same_text(texts))


class MntpLoss:
    """Micro-batch m -> the MNTP cross-entropy of its texts, masked by a generator seeded from (seed, m)."""

    def __init__(self, causal: nn.Module, tok: Tokenizer, sampler: ViewSampler, mask_id: int,
                 cfg: Stage1Cfg) -> None:
        self.base, self.lm_head = base_of(causal), causal.get_output_embeddings()
        self.masking = MntpMasking(mask_id, int(causal.config.vocab_size), cfg.mntp_probability)
        self.tok, self.sampler, self.seed = tok, sampler, cfg.seed
        self.gen = torch.Generator()

    def __call__(self, m: int) -> torch.Tensor:
        self.gen.manual_seed(int(np.random.SeedSequence([self.seed, 2, m]).generate_state(1)[0]))
        ids, mask, _ = self.tok(self.sampler(m)[0])
        inputs, labels = self.masking(torch.from_numpy(ids), torch.from_numpy(mask), self.gen)
        mask_t = torch.from_numpy(mask)
        total, count = torch.zeros(()), 0
        for chunk in length_chunks(mask.sum(axis=1).tolist()):
            width = int(mask[chunk].sum(axis=1).max())
            idx = torch.tensor(chunk)
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
            hidden = self.base(input_ids=inputs[idx, :width],
                               attention_mask=bidirectional_mask(mask_t[idx, :width], dtype),
                               use_cache=False).last_hidden_state
            h, y = mntp_targets(hidden, labels[idx, :width])
            # the LM head only where a token is predicted: the vocabulary projection dominates otherwise
            total = total + F.cross_entropy(self.lm_head(h).float(), y, reduction="sum")
            count += len(y)
        return total / max(1, count)
