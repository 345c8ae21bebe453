"""Architecture configs: dataclasses saved as JSON beside every checkpoint and inside every bundle."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the backbones of llm2clip.vision.BACKBONES, named here so that command lines list them without importing torch
VISION_ARCHS = ("efficientnet-lite0", "dinov2-s14")


@dataclass
class PreprocessCfg:
    size: int = 224  # square side the encoder sees
    resize: str = "shortest_side_center_crop"  # or "squash": resize both sides to `size`
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel mean of [0, 1] RGB
    std: tuple[float, float, float] = IMAGENET_STD  # per-channel std of [0, 1] RGB


@dataclass
class VisionCfg:
    arch: str = "efficientnet-lite0"  # backbone name (see llm2clip.vision.BACKBONES)
    pretrained: bool = True  # start from the offline default ImageNet weights
    image_size: int = 224  # input side; the backbone's static padding depends on it (dinov2: a multiple of 14)
    pool_width: int = 256  # channels after the 1x1 reduction that feeds the attention pool
    pool_heads: int = 4  # heads of the attention pool (CLIP ResNet-style, with positional embedding)
    # 1: CLIP's pool, one query made from the mean token; Q > 1: Q learned queries (CoCa's attentional pooler)
    # whose outputs are concatenated before the projection, so that where each thing is can survive the pool
    pool_queries: int = 1
    # None: the whole backbone trains; N: only its last N blocks and the layers above them (0: a locked,
    # LiT-style backbone under a trained attention pool)
    trainable_blocks: int | None = None
    # None: all the backbone's blocks; K: only its first K (dinov2-s14), read where the cell probe finds more
    # of each object's class, colour and orientation than after the last block
    depth: int | None = None


@dataclass
class AdapterCfg:
    in_dim: int = 576  # LLM hidden size (mean-pooled embedding width)
    blocks: int = 4  # residual MLP blocks, as the official LLM2CLIP adapter
    expansion: int = 2  # hidden width of each block = in_dim * expansion
    dropout: float = 0.0


@dataclass
class ClipTextCfg:
    vocab_size: int = 49152  # the tokenizer's vocabulary (SmolLM2's by default)
    context: int = 77  # CLIP's context: tokens past it are cut
    width: int = 256  # transformer width
    layers: int = 4
    heads: int = 4


@dataclass
class TextCfg:
    llm: str = "smollm2-135m-instruct"  # name of the text encoder checkpoint (informative)
    max_tokens: int = 512  # captions are cut here, not at 77
    pooling: str = "mean"  # mean over non-padding tokens, bidirectional attention (LLM2Vec); "eot" for clip77
    add_special_tokens: bool = False  # True for BERT-type encoders ([CLS] ... [SEP])


@dataclass
class ModelCfg:
    embed_dim: int = 256  # width of the joint embedding space
    vision: VisionCfg = field(default_factory=VisionCfg)
    adapter: AdapterCfg = field(default_factory=AdapterCfg)
    text: TextCfg = field(default_factory=TextCfg)
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    # set: a CLIP text transformer trained jointly replaces the frozen LLM + adapter (the clip77 baseline)
    text_tower: ClipTextCfg | None = None
    init_logit_scale: float = 2.6592  # log(1/0.07), CLIP's initial temperature

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCfg:
        def build(klass, values):
            known = {f.name for f in fields(klass)}
            kwargs = {k: v for k, v in (values or {}).items() if k in known}
            for key in ("mean", "std"):
                if key in kwargs:
                    kwargs[key] = tuple(kwargs[key])
            return klass(**kwargs)

        return cls(
            embed_dim=data.get("embed_dim", 256),
            vision=build(VisionCfg, data.get("vision")),
            adapter=build(AdapterCfg, data.get("adapter")),
            text=build(TextCfg, data.get("text")),
            preprocess=build(PreprocessCfg, data.get("preprocess")),
            text_tower=build(ClipTextCfg, data["text_tower"]) if data.get("text_tower") else None,
            init_logit_scale=data.get("init_logit_scale", 2.6592),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelCfg:
        return cls.from_dict(json.loads(Path(path).read_text()))
