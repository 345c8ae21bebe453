"""The stage-2 LLM2CLIP model: trainable vision tower + adapter over frozen LLM caption embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm2clip.adapter import Adapter
from llm2clip.clip_text import ClipTextTransformer
from llm2clip.config import ModelCfg
from llm2clip.errors import ConfigError
from llm2clip.text import LLMEncoder
from llm2clip.vision import VisionTower, preprocess_for


class LLM2CLIP(nn.Module):
    def __init__(self, cfg: ModelCfg) -> None:
        super().__init__()
        self.cfg = cfg
        _check_normalisation(cfg)
        self.visual = VisionTower(cfg.vision, cfg.embed_dim)
        # one text side: an adapter over frozen LLM embeddings (LLM2CLIP), or a jointly trained CLIP text
        # transformer (the 77-token baseline)
        self.adapter: Adapter | None = None
        self.text_tower: ClipTextTransformer | None = None
        if cfg.text_tower is not None:
            self.text_tower = ClipTextTransformer(cfg.text_tower, cfg.embed_dim)
        else:
            self.adapter = Adapter(cfg.adapter, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixels).float(), dim=-1)

    def encode_image_tokens(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """``encode_image`` from backbone tokens that entered block ``start`` (a frozen prefix, cached)."""
        return F.normalize(self.visual.forward_from(tokens, start).float(), dim=-1)

    def encode_text_embedding(self, llm_embedding: torch.Tensor) -> torch.Tensor:
        """Frozen LLM caption embedding (B, in_dim) -> unit joint embedding (B, embed_dim)."""
        assert self.adapter is not None, "this model has a CLIP text tower: use encode_text_tokens"
        return F.normalize(self.adapter(llm_embedding).float(), dim=-1)

    def encode_text_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids -> unit joint embedding, through the jointly trained CLIP text tower."""
        assert self.text_tower is not None, "this model reads frozen LLM embeddings: use encode_text_embedding"
        return self.text_tower.encode(input_ids, attention_mask)


def _check_normalisation(cfg: ModelCfg) -> None:
    """Pretrained weights see pixels normalised as in their own training, or their features are off."""
    want = preprocess_for(cfg.vision)
    if cfg.vision.pretrained and (tuple(cfg.preprocess.mean), tuple(cfg.preprocess.std)) != (want.mean, want.std):
        raise ConfigError(f"the pretrained {cfg.vision.arch} expects pixels normalised with mean {want.mean} and "
                          f"std {want.std}, the config has {cfg.preprocess.mean} and {cfg.preprocess.std}: use "
                          "llm2clip.vision.preprocess_for(vision) for the preprocessing")


class ImageEncoderModule(nn.Module):
    """What ``image_encoder.onnx`` computes: pixels -> unit embedding."""

    def __init__(self, model: LLM2CLIP) -> None:
        super().__init__()
        self.visual = model.visual

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixel_values).float(), dim=-1)


class ClipTextEncoderModule(nn.Module):
    """What ``text_encoder.onnx`` computes for the clip77 baseline: token ids -> unit embedding."""

    def __init__(self, model: LLM2CLIP) -> None:
        super().__init__()
        assert model.text_tower is not None
        self.text_tower = model.text_tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_tower.encode(input_ids, attention_mask)


class TextEncoderModule(nn.Module):
    """What ``text_encoder.onnx`` computes: LLM + mean pooling + adapter, token ids -> unit embedding."""

    def __init__(self, llm: LLMEncoder, adapter: Adapter) -> None:
        super().__init__()
        self.llm = llm
        self.adapter = adapter

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.adapter(self.llm(input_ids, attention_mask)).float(), dim=-1)
