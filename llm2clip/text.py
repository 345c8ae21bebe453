"""The LLM as a text encoder: bidirectional attention and mean pooling (the LLM2Vec recipe)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    """Fast tokenizer with right padding and truncation; identical in training, export and serving."""

    def __init__(self, folder: str | Path, max_tokens: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        folder = Path(folder)
        self._tok = HFTokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.max_tokens = max_tokens
        self.pad_id = _pad_id(folder, self._tok)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (input_ids int64 (B, L), attention_mask int64 (B, L), truncated bool (B,))."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        lengths = [len(e.ids) for e in encs]
        width = max(1, min(self.max_tokens, max(lengths, default=1)))
        ids = np.full((len(encs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for i, enc in enumerate(encs):
            row = enc.ids[: self.max_tokens]
            if not row:  # an empty text still gets one token, so mean pooling has something to average
                row = [self.pad_id]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask, np.asarray([n > self.max_tokens for n in lengths])

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def _pad_id(folder: Path, tok) -> int:
    cfg_file = folder / "tokenizer_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        for key in ("pad_token", "eos_token"):
            name = cfg.get(key)
            if isinstance(name, dict):
                name = name.get("content")
            if name and tok.token_to_id(name) is not None:
                return int(tok.token_to_id(name))
    return 0


def bidirectional_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 0/1 -> (B, 1, L, L) additive mask: every token sees every non-padding token."""
    keep = attention_mask[:, None, None, :].to(dtype)
    bias = (1.0 - keep) * torch.finfo(dtype).min
    length = attention_mask.shape[1]
    return bias.expand(-1, 1, length, length)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class LLMEncoder(nn.Module):
    """A Hugging Face decoder LLM made bidirectional and mean pooled; hidden size = ``dim``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # a 4D mask passed in is used as-is by transformers' mask builders; is_causal=False stops SDPA
        # from re-adding a causal triangle on its own
        for module in self.model.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False
        self.dim = int(model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32, attn: str = "sdpa") -> LLMEncoder:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(folder), dtype=dtype, attn_implementation=attn)
        model.eval()
        return cls(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
        mask4d = bidirectional_mask(attention_mask, dtype)
        out = self.model(input_ids=input_ids, attention_mask=mask4d, use_cache=False)
        return mean_pool(out.last_hidden_state.float(), attention_mask)
