"""The LLM as a text encoder: bidirectional attention and mean pooling (the LLM2Vec recipe)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llm2clip.tokenizer import TOKENIZER_FILE, Tokenizer

__all__ = ["LLMEncoder", "TOKENIZER_FILE", "Tokenizer", "bidirectional_mask", "mean_pool"]

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
                setattr(module, "is_causal", False)  # noqa: B010 (typed as Module | Tensor)
        self.dim = int(getattr(model.config, "hidden_size"))  # noqa: B009

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32, attn: str = "sdpa") -> LLMEncoder:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(folder), dtype=dtype, attn_implementation=attn)
        model.eval()
        return cls(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        device_type = input_ids.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        mask4d = bidirectional_mask(attention_mask, dtype)
        out = self.model(input_ids=input_ids, attention_mask=mask4d, use_cache=False)
        return mean_pool(out.last_hidden_state.float(), attention_mask)
