"""Vision towers and the image preprocessing that training, indexing and serving all share."""

from __future__ import annotations

import math

import torch
from torch import nn

from llm2clip.config import VisionCfg
from llm2clip.preprocess import preprocess_image

__all__ = ["AttentionPool", "BACKBONES", "VisionTower", "preprocess_image"]


class AttentionPool(nn.Module):
    """CLIP ResNet-style attention pooling: keeps *where* things are, which global average pooling loses."""

    def __init__(self, in_channels: int, width: int, heads: int, grid: int, out_dim: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, width, kernel_size=1)
        self.pos = nn.Parameter(torch.randn(grid * grid + 1, width) / math.sqrt(width))
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.reduce(feats).flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.pos.to(x.dtype)
        out, _ = self.attn(x[:, :1], x, x, need_weights=False)
        return self.proj(self.norm(out[:, 0]))


class EfficientNetLiteBackbone(nn.Module):
    channels = 1280
    stride = 32

    def __init__(self, image_size: int, pretrained: bool) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if pretrained:
            from llm2clip.defaults import efficientnet_lite0_weights

            state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            if set(missing) - {"_fc.weight", "_fc.bias"} or unexpected:
                raise RuntimeError(f"EfficientNet-Lite0 weights do not match: {missing} {unexpected}")
        # the classifier is never used; dropping it keeps it out of the optimizer and the ONNX graph
        del net._fc
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


BACKBONES = {"efficientnet-lite0": EfficientNetLiteBackbone}


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionCfg, out_dim: int) -> None:
        super().__init__()
        if cfg.arch not in BACKBONES:
            raise ValueError(f"unknown vision arch {cfg.arch!r}; known: {sorted(BACKBONES)}")
        self.backbone = BACKBONES[cfg.arch](cfg.image_size, cfg.pretrained)
        grid = math.ceil(cfg.image_size / self.backbone.stride)
        self.pool = AttentionPool(self.backbone.channels, cfg.pool_width, cfg.pool_heads, grid, out_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone(pixels))
