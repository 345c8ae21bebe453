"""Stage 1's two losses: the supervised contrastive loss over caption views, and MNTP.

- Negatives that are the same text as the anchor (identical short captions of two scenes) are dropped
  from the denominator: identical inputs give identical embeddings, so they can only add noise.
- MNTP follows LLM2Vec: 20% of the tokens (never padding, never the first, which has no predecessor)
  are selected; of those 80% become the mask token, 10% a random token, 10% stay; the token at position
  i is predicted from the hidden state at position i - 1 by the model's own ``lm_head``, cross-entropy on
  the selected positions only. The mask token is the tokenizer's own when its config names one;
  Llama-family tokenizers have none, so like LLM2Vec's default ("blank") we use "_" when the vocabulary
  has it, else padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llm2clip.text import Tokenizer

IGNORE = -100


def supcon_loss(emb: torch.Tensor, labels: torch.Tensor, temperature: float,
                ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised contrastive loss (SupCon) over N views; views with the same label are positives.

    With two views per label it is the symmetric InfoNCE of SimCSE / LLM2Vec: each view must find its
    partner among the other 2B - 1 views. ``ignore`` (N, N) drops pairs from the negatives.
    """
    with torch.autocast(emb.device.type, enabled=False):  # bf16 logits / temperature would round the loss
        z = F.normalize(emb.float(), dim=-1)
        logits = z @ z.t() / temperature
    own = torch.eye(len(z), dtype=torch.bool, device=z.device)
    pos = (labels[:, None] == labels[None, :]) & ~own
    drop = own if ignore is None else own | (ignore & ~pos)
    logits = logits.masked_fill(drop, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = pos.sum(dim=1)
    per_view = -log_prob.masked_fill(~pos, 0.0).sum(dim=1) / n_pos.clamp(min=1)
    return per_view[n_pos > 0].mean()


def same_text(texts: list[str]) -> torch.Tensor:
    """(N, N) True where two views are the very same text: the pairs ``supcon_loss`` ignores."""
    arr = np.asarray(texts, dtype=object)
    return torch.from_numpy(arr[:, None] == arr[None, :])


@dataclass(frozen=True)
class MntpMasking:
    """MNTP's corruption of a batch: ``probability`` of the tokens are selected; of those ``mask_frac`` become
    ``mask_id``, ``random_frac`` a random token below ``vocab_size``, the rest stay."""

    mask_id: int
    vocab_size: int
    probability: float = 0.2
    mask_frac: float = 0.8
    random_frac: float = 0.1

    def __call__(self, ids: torch.Tensor, attention_mask: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels): labels hold the original token at selected positions, -100 elsewhere.

        Position 0 is never selected (nothing precedes it to predict it from), nor is padding; a text with a
        candidate gets at least one selected token, so short captions teach something too.
        """
        cand = attention_mask.bool().clone()
        cand[:, 0] = False
        u = torch.rand(ids.shape, generator=generator)
        select = cand & (u < self.probability)
        # the candidate with the lowest draw stands in for rows where the draw selected nothing
        lowest = torch.where(cand, u, torch.full_like(u, 2.0)).argmin(dim=1, keepdim=True)
        fallback = torch.zeros_like(select).scatter_(1, lowest, True) & cand
        select |= fallback & ~select.any(dim=1, keepdim=True)
        v = torch.rand(ids.shape, generator=generator)
        inputs = ids.clone()
        inputs[select & (v < self.mask_frac)] = self.mask_id
        random_pos = select & (v >= self.mask_frac) & (v < self.mask_frac + self.random_frac)
        inputs[random_pos] = torch.randint(self.vocab_size, ids.shape, generator=generator)[random_pos]
        labels = torch.where(select, ids, torch.full_like(ids, IGNORE))
        return inputs, labels


def mntp_targets(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (M, H) that predict the selected tokens (M,): token i from the state at i - 1."""
    h, y = hidden[:, :-1], labels[:, 1:]
    keep = y != IGNORE
    return h[keep], y[keep]


def mask_token_id(folder: str | Path, tok: Tokenizer) -> int:
    """The token MNTP masks with: the tokenizer config's mask token, else "_", else padding."""
    cfg_file = Path(folder) / "tokenizer_config.json"
    if cfg_file.is_file():
        name = json.loads(cfg_file.read_text()).get("mask_token")
        if isinstance(name, dict):
            name = name.get("content")
        found = tok.token_id(name) if name else None
        if found is not None:
            return found
    blank = tok.token_id("_")
    return blank if blank is not None else tok.pad_id
