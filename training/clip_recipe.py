"""The pieces of the stage-2 recipe (``training.clip``): the CLIP loss, layer-wise learning rates and AdamW
groups, frozen BatchNorm, stochastic depth, the random choices derived from (seed, step), which caption keys a
sample draws from, and the optional term that keeps the adapter's similarities close to the text encoder's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llm2clip.model import LLM2CLIP
from training.config import TrainCfg

# positions and learned tokens are not weights: decay would pull them toward zero (the pool's and DINOv2's)
NO_DECAY_SUFFIXES = (".pos", ".position_embeddings", ".cls_token", ".queries")


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    logits = logit_scale.exp().clamp(max=100.0) * img @ txt.t()
    labels = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def geometry_loss(inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """How far the adapter's output similarities within a batch are from its input's: the mean squared difference
    of the two cosine matrices off the diagonal. The input is centred on its batch mean first (an LLM's caption
    embeddings share one large common component, so their raw cosines are all near 1)."""
    x = F.normalize(inp - inp.mean(0, keepdim=True), dim=-1)
    y = F.normalize(out, dim=-1)
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    return ((x @ x.t() - y @ y.t())[off] ** 2).mean()


def drawable(available: Iterable[str], caption_keys: Sequence[str]) -> list[str]:
    """The keys a sample of this item draws from, uniformly: ``caption_keys`` in their order, repeats kept (a key
    listed twice is drawn twice as often), less those the item has no caption for."""
    have = set(available)
    return [k for k in caption_keys if k in have]


def layer_ids(model: LLM2CLIP) -> tuple[dict[str, int], int]:
    """Layer id of every parameter, and the top id (that of the pool, the adapter and the temperature).

    The backbone numbers its own layers (``llm2clip.vision``): stem 0, block i is i + 1, head n_blocks + 1
    (EfficientNet-Lite0: 16 MBConv blocks; DINOv2 ViT-S/14: 12 transformer blocks).
    """
    backbone = model.visual.backbone
    top = backbone.num_blocks + 2
    ids = {}
    for name, _ in model.named_parameters():
        sub = name.removeprefix("visual.backbone.")
        ids[name] = top if sub == name else backbone.layer_of(sub)
    return ids, top


def layer_lr(layer: int, top: int, cfg: TrainCfg) -> float:
    if layer == top:
        return cfg.lr
    head = cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr * cfg.layer_decay
    return head * cfg.layer_decay ** (top - 1 - layer)


def param_groups(model: LLM2CLIP, cfg: TrainCfg) -> list[dict[str, Any]]:
    """One AdamW group per (layer, decay or not), each with its layer-decayed learning rate."""
    ids, top = layer_ids(model)
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or name == "logit_scale" or name.endswith(NO_DECAY_SUFFIXES)
        groups.setdefault((ids[name], no_decay), []).append(p)
    return [
        {"params": ps, "lr": layer_lr(layer, top, cfg), "weight_decay": 0.0 if no_decay else cfg.weight_decay,
         "name": f"{'top' if layer == top else f'layer{layer:02d}'}{'_nd' if no_decay else ''}", "layer": layer}
        for (layer, no_decay), ps in sorted(groups.items())
    ]


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def set_drop_path(model: LLM2CLIP, rate: float) -> None:
    # the EfficientNet code reads its stochastic-depth rate from global params at every forward
    net = getattr(model.visual.backbone, "net", None)
    if net is not None and hasattr(net, "_global_params"):
        net._global_params = net._global_params._replace(drop_connect_rate=rate)


def step_seed(*parts: int) -> int:
    """A torch seed from (seed, step, rank): stochastic depth needs no saved random state to resume."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def caption_picks(seed: int, step: int, n: int) -> np.ndarray:
    """Caption choice numbers of one global batch: the same on every rank and after a resume."""
    return np.random.default_rng([seed, step, 1]).integers(0, 1 << 30, size=n)
