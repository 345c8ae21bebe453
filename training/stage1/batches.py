"""Micro-batch m's loss in each phase: its texts through the model, in length chunks.

A micro-batch's texts are sorted by length and cut into up to ``Stage1Cfg.length_buckets`` calls where the
padded token count is least: the matmuls, most of a step, do no work on padding that a single padded batch
would carry (the repro's micro-batches: 20% more tokens than real at the original 2 calls, ~5% at 4).

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
from training.stage1.lora import base_of, model_device
from training.stage1.losses import MntpMasking, mntp_targets, same_text, supcon_loss
from training.stage1.views import ViewSampler

# a forward and backward call's fixed cost (30 layers' op dispatch), in tokens of matmul work: what one more
# length chunk must save in padding to be worth it
CHUNK_OVERHEAD = 32


def length_chunks(lengths: list[int], max_chunks: int = 2, overhead: int = 0) -> list[list[int]]:
    """Indices sorted by length, cut into at most ``max_chunks`` runs so that the padded token count, plus
    ``overhead`` tokens per run (a forward call's fixed cost), is smallest; fewer runs and earlier cuts win
    ties. ``max_chunks=2`` cuts long from short captions once; more runs leave less padding among long
    captions of different lengths, which is where the matmuls' work goes."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    if n == 0:
        return []
    srt = [lengths[i] for i in order]
    # best[k][j]: the cheapest cost of the first j sorted texts in k runs; cut[k][j]: where its last run starts
    best = [[0.0] + [float("inf")] * n]
    cut: list[list[int]] = [[0] * (n + 1)]
    for k in range(1, max(1, max_chunks) + 1):
        row, at = [float("inf")] * (n + 1), [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                cost = best[k - 1][i] + (j - i) * srt[j - 1] + overhead
                if cost < row[j]:
                    row[j], at[j] = cost, i
        best.append(row)
        cut.append(at)
    k = min(range(1, len(best)), key=lambda c: (best[c][n], c))
    chunks, j = [], n
    for c in range(k, 0, -1):
        i = cut[c][j]
        chunks.append(order[i:j])
        j = i
    return chunks[::-1]


def _overhead(max_chunks: int) -> int:
    # 2 runs is the original single cut by padding alone, kept exact so that its runs reproduce
    return CHUNK_OVERHEAD if max_chunks > 2 else 0


def encode(enc: LLMEncoder, tok: Tokenizer, texts: list[str], max_chunks: int = 2) -> torch.Tensor:
    """Embeddings (N, D) of ``texts``, in their order, each length chunk padded only to its own longest text;
    on the model's device."""
    ids, mask, _ = tok(texts)
    device = model_device(enc)
    ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
    order, parts = [], []
    for chunk in length_chunks(mask.sum(axis=1).tolist(), max_chunks, _overhead(max_chunks)):
        width = int(mask[chunk].sum(axis=1).max())
        idx = torch.tensor(chunk, device=device)
        order.append(idx)
        parts.append(enc(ids_t[idx, :width], mask_t[idx, :width]).float())
    return torch.cat(parts)[torch.argsort(torch.cat(order))]


class ContrastiveLoss:
    """Micro-batch m -> the supervised contrastive loss of its views' embeddings."""

    def __init__(self, enc: LLMEncoder, tok: Tokenizer, sampler: ViewSampler, temperature: float,
                 length_buckets: int = 2) -> None:
        self.enc, self.tok, self.sampler, self.temperature = enc, tok, sampler, temperature
        self.length_buckets = length_buckets

    def __call__(self, m: int) -> torch.Tensor:
        texts, labels = self.sampler(m)
        emb = encode(self.enc, self.tok, texts, self.length_buckets)
        return supcon_loss(emb, labels.to(emb.device), self.temperature, same_text(texts).to(emb.device))


class MntpLoss:
    """Micro-batch m -> the MNTP cross-entropy of its texts, masked by a generator seeded from (seed, m)."""

    def __init__(self, causal: nn.Module, tok: Tokenizer, sampler: ViewSampler, mask_id: int,
                 cfg: Stage1Cfg) -> None:
        self.base, self.lm_head = base_of(causal), causal.get_output_embeddings()
        self.masking = MntpMasking(mask_id, int(causal.config.vocab_size), cfg.mntp_probability)
        self.tok, self.sampler, self.seed = tok, sampler, cfg.seed
        self.length_buckets = cfg.length_buckets
        self.gen = torch.Generator()

    def __call__(self, m: int) -> torch.Tensor:
        self.gen.manual_seed(int(np.random.SeedSequence([self.seed, 2, m]).generate_state(1)[0]))
        ids, mask, _ = self.tok(self.sampler(m)[0])
        # drawn on the CPU from the seeded generator: the same masks whichever device trains
        inputs, labels = self.masking(torch.from_numpy(ids), torch.from_numpy(mask), self.gen)
        device = model_device(self.base)
        inputs, labels, mask_t = inputs.to(device), labels.to(device), torch.from_numpy(mask).to(device)
        total, count = torch.zeros((), device=device), 0
        on = device.type
        dtype = torch.get_autocast_dtype(on) if torch.is_autocast_enabled(on) else torch.float32
        for chunk in length_chunks(mask.sum(axis=1).tolist(), self.length_buckets, _overhead(self.length_buckets)):
            width = int(mask[chunk].sum(axis=1).max())
            idx = torch.tensor(chunk, device=device)
            hidden = self.base(input_ids=inputs[idx, :width],
                               attention_mask=bidirectional_mask(mask_t[idx, :width], dtype),
                               use_cache=False).last_hidden_state
            h, y = mntp_targets(hidden, labels[idx, :width])
            # the LM head only where a token is predicted: the vocabulary projection dominates otherwise
            total = total + F.cross_entropy(self.lm_head(h).float(), y, reduction="sum")
            count += len(y)
        return total / max(1, count)
