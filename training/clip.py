"""Stage 2: train the vision tower and the adapter against frozen LLM caption embeddings (CLIP loss).

Per sample the caption is drawn at random among the item's captions (long or short), as the paper
does. Images are decoded and resized once into a uint8 cache; there is no augmentation, because flips
and crops would contradict captions that name orientation and position.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from llm2clip.config import AdapterCfg, ModelCfg, PreprocessCfg, TextCfg, VisionCfg
from llm2clip.data import Dataset
from llm2clip.errors import DatasetError
from llm2clip.model import LLM2CLIP
from training.checkpoint import is_checkpoint, load_checkpoint, load_state, save_checkpoint
from training.embed import CaptionEmbeddings

log = logging.getLogger(__name__)


@dataclass
class TrainCfg:
    epochs: int = 8  # passes over the training images
    batch_size: int = 64  # global batch (the CLIP loss's negatives)
    lr: float = 5e-4  # adapter, attention pool and temperature
    backbone_lr: float = 2e-4  # pretrained vision backbone
    weight_decay: float = 0.05  # AdamW, not applied to norms, biases and the temperature
    warmup_steps: int = 50  # linear warmup, then cosine to 0
    bf16: bool = True  # autocast on CPU (AMX) and GPU
    seed: int = 0
    caption_keys: tuple[str, ...] = ("long", "short")  # drawn uniformly per sample
    log_every: int = 10


def load_images(dataset: Dataset, size: int, progress: bool = True) -> np.ndarray:
    """Every training image resized to size x size, uint8 (N, size, size, 3)."""
    out = np.zeros((len(dataset), size, size, 3), np.uint8)
    for i, item in enumerate(tqdm(dataset.items, desc="load images", unit="img", disable=not progress)):
        try:
            with Image.open(dataset.image_path(item)) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BICUBIC)
                out[i] = np.asarray(im)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read the image of item {item.id!r} ({exc.__class__.__name__}): fix or "
                               "remove it from items.jsonl") from None
    return out


def normalize(batch_uint8: torch.Tensor, cfg: PreprocessCfg) -> torch.Tensor:
    x = batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    logits = logit_scale.exp().clamp(max=100.0) * img @ txt.t()
    labels = torch.arange(len(img))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: LLM2CLIP, cfg: TrainCfg) -> list[dict[str, Any]]:
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if name.startswith("visual.backbone.") else "head"
        no_decay = p.ndim < 2 or name == "logit_scale" or name.endswith(".pos")
        groups.setdefault((part, no_decay), []).append(p)
    return [
        {"params": ps, "lr": cfg.backbone_lr if part == "backbone" else cfg.lr,
         "weight_decay": 0.0 if no_decay else cfg.weight_decay, "name": f"{part}{'_nd' if no_decay else ''}"}
        for (part, no_decay), ps in groups.items()
    ]


def default_model_cfg(embed_dim: int, llm_dim: int, image_size: int, llm_name: str, max_tokens: int) -> ModelCfg:
    return ModelCfg(
        embed_dim=embed_dim,
        vision=VisionCfg(image_size=image_size),
        adapter=AdapterCfg(in_dim=llm_dim),
        text=TextCfg(llm=llm_name, max_tokens=max_tokens),
        preprocess=PreprocessCfg(size=image_size),
    )


def train_clip(
    dataset: Dataset,
    embeddings_dir: str | Path,
    out: str | Path,
    cfg: TrainCfg | None = None,
    model_cfg: ModelCfg | None = None,
    embed_dim: int = 256,
    image_size: int = 224,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a stage-2 checkpoint in ``out``; returns the final training summary."""
    cfg = cfg or TrainCfg()
    out = Path(out)
    caps = CaptionEmbeddings(embeddings_dir)
    text_info = {**caps.manifest["text_encoder"], "embeddings": str(Path(embeddings_dir).resolve())}
    keys = [[k for k in caps.keys_for(item.id) if k in cfg.caption_keys] for item in dataset]
    missing = [item.id for item, k in zip(dataset, keys, strict=True) if not k]
    if missing:
        raise DatasetError(f"{len(missing)} items have no caption embedding (e.g. {missing[0]!r}): run "
                           "`llm2clip train embed` on this dataset")

    resumed = is_checkpoint(out) and load_state(out) is not None
    if resumed:
        model, _ = load_checkpoint(out)
        state = load_state(out)
        assert state is not None
        cfg = TrainCfg(**{**asdict(cfg), **state["train_cfg"], "epochs": cfg.epochs})
        cfg.caption_keys = tuple(cfg.caption_keys)
    else:
        model_cfg = model_cfg or default_model_cfg(embed_dim, caps.dim, image_size,
                                                   text_info["name"], caps.manifest["max_tokens"])
        torch.manual_seed(cfg.seed)
        model = LLM2CLIP(model_cfg)
        state = None
    if model.cfg.adapter.in_dim != caps.dim:
        raise DatasetError(f"the adapter expects {model.cfg.adapter.in_dim}-d caption embeddings, the shards hold "
                           f"{caps.dim}-d: embed with the same text encoder")
    model.train()
    model.to(memory_format=torch.channels_last)
    images = torch.from_numpy(load_images(dataset, model.cfg.preprocess.size, progress))

    opt = torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.98), eps=1e-6)
    base_lrs = [g["lr"] for g in opt.param_groups]
    steps_per_epoch = max(1, len(dataset) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    step, history = 0, []
    rng = random.Random(cfg.seed)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        rng.setstate(state["py_rng"])
        torch.set_rng_state(state["torch_rng"])
    if step >= total:
        log.info("%s is already trained for %d steps", out, total)
        return {"steps": step, "history": history, "resumed": resumed}

    bar = tqdm(total=total, initial=step, desc="train clip", unit="step", disable=not progress)
    t_last, seen = time.perf_counter(), 0
    while step < total:
        epoch = step // steps_per_epoch
        perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for b in range(step % steps_per_epoch, steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            pixels = normalize(images[idx], model.cfg.preprocess)
            text = torch.stack([caps.get(dataset.items[i].id, rng.choice(keys[i])) for i in idx.tolist()]).float()
            f = lr_factor(step, total, cfg.warmup_steps)
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = base * f
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                img_emb = model.encode_image(pixels)
                txt_emb = model.encode_text_embedding(text)
            loss = clip_loss(img_emb.float(), txt_emb.float(), model.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(idx)
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                now = time.perf_counter()
                rate = seen / (now - t_last)
                t_last, seen = now, 0
                history.append({"step": step, "epoch": epoch, "loss": round(float(loss.detach()), 5),
                                "logit_scale": round(float(model.logit_scale.detach().exp()), 3), "img_s": round(rate, 1),
                                "lr": opt.param_groups[0]["lr"]})
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", img_s=f"{rate:.1f}")
            if step >= total:
                break
        save_checkpoint(out, model, text_info, {
            "step": step, "history": history, "optimizer": opt.state_dict(), "train_cfg": asdict(cfg),
            "py_rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
        })
    bar.close()
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return {"steps": step, "history": history, "resumed": resumed}
