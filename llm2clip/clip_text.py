"""A CLIP-style text transformer with a 77-token context: the vanilla-CLIP baseline of the paper.

Causal self-attention, learned positions, pooled at the last non-padding token (CLIP's EOT pooling).
Trained from scratch jointly with the vision tower; tokens past the context are cut, which is exactly
what LLM2CLIP removes. Attention is written out with matmuls so it exports to ONNX as is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llm2clip.config import ClipTextCfg


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(w // self.heads) + bias
        y = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, w)
        x = x + self.out(y)
        return x + self.mlp(self.ln2(x))


class ClipTextTransformer(nn.Module):
    def __init__(self, cfg: ClipTextCfg, out_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.context, cfg.width) * 0.01)
        self.blocks = nn.ModuleList([_Block(cfg.width, cfg.heads) for _ in range(cfg.layers)])
        self.ln_final = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, out_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and 0/1 mask, L <= context -> (B, out_dim), not normalized."""
        ids = input_ids[:, : self.cfg.context]
        mask = attention_mask[:, : self.cfg.context]
        n = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
        allowed = causal[None, None] & mask[:, None, None, :].bool()
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, -1e4)
        for block in self.blocks:
            x = block(x, bias)
        x = self.ln_final(x)
        last = (mask.sum(dim=1) - 1).clamp(min=0)
        pooled = x[torch.arange(x.shape[0], device=x.device), last]
        return self.proj(pooled)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self(input_ids, attention_mask).float(), dim=-1)
