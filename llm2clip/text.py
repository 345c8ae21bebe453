"""The LLM as a text encoder: bidirectional attention and mean pooling (the LLM2Vec recipe)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

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
        mask4d = bidirectional_mask(attention_mask, self._mask_dtype(input_ids.device.type))
        out = self.model(input_ids=input_ids, attention_mask=mask4d, use_cache=False)
        return mean_pool(out.last_hidden_state.float(), attention_mask)

    def _mask_dtype(self, device_type: str) -> torch.dtype:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return next(self.model.parameters()).dtype

    def forward_from(self, states: torch.Tensor, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
        """The embedding from the residual stream ``states`` (B, L, dim) after the first ``start`` decoder layers:
        the layers from ``start`` on, the final norm and mean pooling, the same weights as ``forward``
        (``llm2clip.encoders.prefix_states``)."""
        tails = self.__dict__.setdefault("_tails", {})
        if start not in tails:  # the model without its first layers: a shallow copy, every weight shared
            tail = copy.copy(self.model)
            tail._modules = dict(self.model._modules)
            tail.layers = nn.ModuleList(list(self.model.layers)[start:])
            tails[start] = tail
        mask4d = bidirectional_mask(attention_mask, self._mask_dtype(states.device.type))
        out = tails[start](inputs_embeds=states, attention_mask=mask4d, use_cache=False)
        return mean_pool(out.last_hidden_state.float(), attention_mask)

    def capture(self, layers: int) -> _Capture:
        """A context in which ``forward`` also keeps the residual stream after the first ``layers`` layers."""
        return _Capture(self.model.layers[layers - 1])


class _Capture:
    """The output of one decoder layer, kept while the context is open (``.states``)."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer, self.states = layer, None
        self._handle: Any = None

    def _keep(self, _module: nn.Module, _args: Any, output: Any) -> None:
        self.states = output[0] if isinstance(output, tuple) else output

    def __enter__(self) -> _Capture:
        self._handle = self.layer.register_forward_hook(self._keep)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
