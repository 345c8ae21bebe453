"""The LLM -> CLIP adapter: residual MLP blocks, LayerNorm, Linear to the joint width (official shape)."""

from __future__ import annotations

import torch
from torch import nn

from llm2clip.config import AdapterCfg


class ResidualMLP(nn.Module):
    def __init__(self, dim: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * expansion)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(dim * expansion, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


class Adapter(nn.Module):
    """Maps a frozen LLM caption embedding into the joint space; the only trainable text-side part."""

    def __init__(self, cfg: AdapterCfg, out_dim: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualMLP(cfg.in_dim, cfg.expansion, cfg.dropout) for _ in range(cfg.blocks)])
        self.norm = nn.LayerNorm(cfg.in_dim)
        self.proj = nn.Linear(cfg.in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.blocks(x.float())))
