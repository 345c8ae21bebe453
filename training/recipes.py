"""Named stage-2 recipes: what `llm2clip train clip --preset`, the demo and the repro train with."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from llm2clip.errors import LLM2CLIPError
from training.config import ModelShape, TrainCfg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    about: str
    values: Mapping[str, Any] = field(default_factory=dict)  # TrainCfg fields
    # warmup over 1/20 of the run's steps and 100 history points, from the training set's size
    scaled_schedule: bool = False
    # ModelShape fields: the vision tower the recipe was chosen for (empty: ModelShape's defaults)
    shape: Mapping[str, Any] = field(default_factory=dict)


DEMO_CAPTIONS = ("long", "long", "long", "short")  # a key listed k times is drawn k times as often
STAGE2_PRESETS: dict[str, Preset] = {
    "default": Preset("the paper's recipe: layer-wise lr decay, frozen BatchNorm statistics, stochastic depth"),
    # what the demo trains: the paper's recipe, chosen on the val split over "simple", then its long:short caption
    # draws 3:1 over 1:1 (+0.07 long-caption R@1 on val, at -0.05 on short captions), then OLB1's tower over
    # EfficientNet-Lite0 at 160 px (short-caption R@1 +0.07 after Holm, two seeds each on val, in less time), then
    # 4,000 scenes for 8 epochs over 2,000 for 16 (long-caption R@1 +0.05 after Holm); docs/results/demo-cc.md
    "demo": Preset("the paper's recipe on DINOv2 ViT-S/14 at 224 px read at block 8, block 8 trained at lr 5e-5 "
                   "(from a token cache of blocks 0-7), 8 epochs, warmup over 1/20 of the steps, 100 history "
                   "points; the long caption drawn 3 times in 4, the short one once",
                   {"epochs": 8, "caption_keys": DEMO_CAPTIONS, "backbone_lr": 5e-5}, scaled_schedule=True,
                   shape={"vision_arch": "dinov2-s14", "image_size": 224, "vision_depth": 8, "trainable_blocks": 1}),
    # the demo's recipe before that: the same draws on EfficientNet-Lite0 at 160 px, 8 epochs
    "demo-e160": Preset("the demo's recipe until it moved to DINOv2: the paper's recipe on EfficientNet-Lite0 at "
                        "160 px for 8 epochs, the same schedule and caption draws",
                        {"epochs": 8, "caption_keys": DEMO_CAPTIONS}, scaled_schedule=True,
                        shape={"vision_arch": "efficientnet-lite0", "image_size": 160}),
    # the demo's recipe until the val comparison above: 0.24 against 0.38 long-caption R@1 on val
    "simple": Preset("one backbone lr, BatchNorm in train mode, no stochastic depth",
                     {"epochs": 8, "backbone_lr": 2e-4, "layer_decay": 1.0, "freeze_bn": False, "drop_path": 0.0}),
    "repro": Preset("the paper's recipe for 10 epochs, warmup over 1/20 of the steps, 100 history points",
                    {"epochs": 10}, scaled_schedule=True),
}


def stage2_preset(name: str, train_items: int | None = None, **overrides: Any) -> TrainCfg:
    """The preset ``name`` with ``overrides`` (TrainCfg fields) on top. A preset with a scaled schedule needs
    ``train_items``, the training set's size; an override of the warmup or the history interval wins."""
    if name not in STAGE2_PRESETS:
        raise LLM2CLIPError(f"unknown stage-2 preset {name!r}: choose among {', '.join(STAGE2_PRESETS)}")
    unknown = set(overrides) - {f.name for f in fields(TrainCfg)}
    if unknown:
        raise TypeError(f"not TrainCfg fields: {sorted(unknown)}")
    preset = STAGE2_PRESETS[name]
    cfg = replace(TrainCfg(), **{**preset.values, **overrides})
    if not preset.scaled_schedule:
        return cfg
    if train_items is None:
        raise ValueError(f"the {name!r} preset scales its schedule to the training set: give train_items")
    total_steps = max(1, train_items // cfg.batch_size) * cfg.epochs
    scaled = {"warmup_steps": max(1, total_steps // 20), "log_every": max(1, total_steps // 100)}
    return replace(cfg, **{k: v for k, v in scaled.items() if k not in overrides})


def stage2_shape(name: str, **given: Any) -> ModelShape:
    """The vision tower of the preset ``name`` with the ``given`` ModelShape fields on top. Another backbone than
    the preset's takes none of the preset's tower settings: they belong to its backbone (a block count, a read-out
    depth, an input side), and a warning says that the preset's recipe was chosen for its own backbone."""
    if name not in STAGE2_PRESETS:
        raise LLM2CLIPError(f"unknown stage-2 preset {name!r}: choose among {', '.join(STAGE2_PRESETS)}")
    shape = dict(STAGE2_PRESETS[name].shape)
    if shape and given.get("vision_arch", shape["vision_arch"]) != shape["vision_arch"]:
        arch = given["vision_arch"]
        own = [n for n, p in STAGE2_PRESETS.items() if p.shape.get("vision_arch") == arch]
        log.warning("the %s preset's recipe was chosen for %s, not %s: its rates and epochs may not suit it%s",
                    name, shape["vision_arch"], arch, f" (chosen for {arch}: {', '.join(own)})" if own else "")
        shape = {}
    return ModelShape(**{**shape, **given})
