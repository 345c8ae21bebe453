"""Stage 2: train the vision tower and the adapter against frozen LLM caption embeddings (CLIP loss).

The recipe of the official LLM2CLIP stage 2: AdamW (no decay on norms, biases, the temperature and positional
embeddings), linear warmup then cosine, layer-wise learning-rate decay over the vision tower (the attention
pool, the adapter and the temperature train at ``lr``; backbone layer ``l`` at ``lr * layer_decay ** (top -
l)``, stem lowest; ``backbone_lr``, when given, replaces ``lr * layer_decay`` as the backbone's top rate),
stochastic depth over the backbone blocks, and per sample a caption drawn at random among the item's captions
(long or short).
BatchNorm statistics are frozen by default: the pretrained running statistics are used while the BN weights
train, so a step does not depend on how the batch is split over processes.

Multi-process: launch the same entry point under ``torchrun --nproc_per_node N``. ``batch_size`` stays the
global batch; every rank draws the same permutation and the same caption choices, takes its slice, and the
loss gathers the features of all ranks (with gradient) so every rank computes the loss of the whole global
batch: N processes train the same model as one process with that batch. Only rank 0 writes.

Everything random is derived from (seed, step) (and the rank, for stochastic depth), so a resumed run needs
no saved random state and continues exactly where an uninterrupted run would be.

Images are decoded and resized once into a uint8 cache; there is no augmentation, because flips and crops
would contradict captions that name orientation and position.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from llm2clip.config import AdapterCfg, ModelCfg, PreprocessCfg, TextCfg, VisionCfg
from llm2clip.data import Dataset
from llm2clip.errors import BundleError, DatasetError, LLM2CLIPError
from llm2clip.model import LLM2CLIP
from llm2clip.preprocess import fit_image
from llm2clip.tokenizer import Tokenizer
from training.checkpoint import is_checkpoint, load_checkpoint, load_state, save_checkpoint
from training.distributed import DistInfo, barrier, gather_with_grad, process_group
from training.embed import CaptionEmbeddings

log = logging.getLogger(__name__)

CURVES = "curves.png"
HISTORY = "history.json"


@dataclass
class TrainCfg:
    epochs: int = 8  # passes over the training images
    batch_size: int = 64  # global batch over all processes (the CLIP loss's negatives)
    lr: float = 5e-4  # top of the model: adapter, attention pool, temperature
    # lr of the backbone's top layer (head conv); None: lr * layer_decay. Lower layers decay from it.
    backbone_lr: float | None = None
    layer_decay: float = 0.85  # per backbone layer, going down from the top (1.0: no decay)
    weight_decay: float = 0.05  # AdamW, not applied to norms, biases, the temperature and positions
    warmup_steps: int = 50  # linear warmup, then cosine to 0
    freeze_bn: bool = True  # BatchNorm uses the pretrained running statistics; its weights still train
    drop_path: float = 0.2  # stochastic depth over the backbone's MBConv blocks (EfficientNet's own rate)
    bf16: bool = True  # autocast on CPU (AMX) and GPU
    seed: int = 0
    caption_keys: tuple[str, ...] = ("long", "short")  # drawn uniformly per sample
    log_every: int = 10


def load_images(dataset: Dataset, preprocess: PreprocessCfg, progress: bool = True) -> np.ndarray:
    """Every training image fitted to the model's input by the bundle's own geometry (``fit_image``: the
    resize mode the service applies), uint8 (N, size, size, 3); ``normalize`` finishes the preprocessing."""
    size = preprocess.size
    out = np.zeros((len(dataset), size, size, 3), np.uint8)
    for i, item in enumerate(tqdm(dataset.items, desc="load images", unit="img", disable=not progress)):
        try:
            with Image.open(dataset.image_path(item)) as im:
                out[i] = np.asarray(fit_image(im, preprocess))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read the image of item {item.id!r} ({exc.__class__.__name__}): fix or "
                               "remove it from items.jsonl") from None
    return out


def normalize(batch_uint8: torch.Tensor, cfg: PreprocessCfg) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (channels_last): ``llm2clip.preprocess.normalize_pixels`` in torch."""
    x = batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    logits = logit_scale.exp().clamp(max=100.0) * img @ txt.t()
    labels = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def layer_ids(model: LLM2CLIP) -> tuple[dict[str, int], int]:
    """Layer id of every parameter, and the top id (that of the pool, the adapter and the temperature).

    EfficientNet: stem 0, MBConv block i is i + 1, head conv/bn n_blocks + 1. A backbone of unknown layout is
    one layer just below the top.
    """
    net = getattr(model.visual.backbone, "net", None)
    blocks = getattr(net, "_blocks", None)
    n = len(blocks) if blocks is not None else 0
    top = n + 2
    ids = {}
    for name, _ in model.named_parameters():
        if not name.startswith("visual.backbone."):
            ids[name] = top
            continue
        sub = name.removeprefix("visual.backbone.net.")
        if blocks is None:
            ids[name] = top - 1
        elif sub.startswith(("_conv_stem.", "_bn0.")):
            ids[name] = 0
        elif sub.startswith("_blocks."):
            ids[name] = int(sub.split(".")[1]) + 1
        elif sub.startswith(("_conv_head.", "_bn1.")):
            ids[name] = n + 1
        else:
            raise ValueError(f"no layer id for backbone parameter {name!r}")
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
        no_decay = p.ndim < 2 or name == "logit_scale" or name.endswith(".pos")
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


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def caption_picks(seed: int, step: int, n: int) -> np.ndarray:
    """Caption choice numbers of one global batch: the same on every rank and after a resume."""
    return np.random.default_rng([seed, step, 1]).integers(0, 1 << 30, size=n)


class _Step(nn.Module):
    """The forward of one training step, as one module call so that DDP sees it."""

    def __init__(self, model: LLM2CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, *text: torch.Tensor):
        if self.model.text_tower is not None:  # clip77: token ids and mask through the joint text tower
            txt = self.model.encode_text_tokens(*text)
        else:  # frozen LLM caption embeddings through the adapter
            txt = self.model.encode_text_embedding(text[0])
        return self.model.encode_image(pixels), txt, self.model.logit_scale


@torch.no_grad()
def evaluate_retrieval(model: LLM2CLIP, images: torch.Tensor, text: torch.Tensor, device: torch.device,
                       bf16: bool, batch_size: int = 64) -> dict[str, float]:
    """t2i / i2t R@1 and R@5 of paired images (uint8 NHWC) and LLM caption embeddings, with the model in
    memory."""
    from training.eval import retrieval_metrics

    was_training = model.training
    model.eval()
    img, txt = [], []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for b in range(0, len(images), batch_size):
            img.append(model.encode_image(normalize(images[b : b + batch_size], model.cfg.preprocess).to(device)))
            txt.append(model.encode_text_embedding(text[b : b + batch_size].float().to(device)))
    model.train(was_training)
    return retrieval_metrics(torch.cat(txt).float().cpu().numpy(), torch.cat(img).float().cpu().numpy(), ks=(1, 5))


def _val_set(val: Dataset, val_embeddings: str | Path, caps: CaptionEmbeddings,
             preprocess: PreprocessCfg, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    vcaps = CaptionEmbeddings(val_embeddings)
    if vcaps.manifest["text_encoder"].get("fingerprint") != caps.manifest["text_encoder"].get("fingerprint"):
        raise DatasetError(f"the validation embeddings in {val_embeddings} come from another text encoder than "
                           "the training embeddings: embed the validation set with the same one")
    missing = [item.id for item in val if "long" not in vcaps.keys_for(item.id)]
    if missing:
        raise DatasetError(f"{len(missing)} validation items have no long-caption embedding (e.g. "
                           f"{missing[0]!r}): run `llm2clip train embed` on the validation set")
    text = torch.stack([vcaps.get(item.id, "long") for item in val])
    return torch.from_numpy(load_images(val, preprocess, progress)), text


def train_clip(
    dataset: Dataset,
    embeddings_dir: str | Path,
    out: str | Path,
    cfg: TrainCfg | None = None,
    model_cfg: ModelCfg | None = None,
    embed_dim: int = 256,
    image_size: int = 224,
    progress: bool = True,
    *,
    val: Dataset | None = None,
    val_embeddings: str | Path | None = None,
    stop_at: int | None = None,
    tokenizer_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or resume) a stage-2 checkpoint in ``out``; returns the final training summary.

    ``embeddings_dir`` None: the model has a CLIP text tower (``model_cfg.text_tower``, the clip77
    baseline) trained jointly on captions tokenized online with ``tokenizer_dir`` (default SmolLM2's).

    Under torchrun this joins the process group and trains data-parallel (see the module docstring).
    ``val`` with ``val_embeddings``: retrieval recall on long captions at the end of every epoch, recorded
    in the history. ``stop_at``: stop (with a checkpoint) once this many steps are done; a later call
    resumes.
    """
    if (val is None) != (val_embeddings is None):
        raise LLM2CLIPError("validation needs both the dataset and its caption embeddings (--val with "
                            "--val-embeddings)")
    if embeddings_dir is None and val is not None:
        raise LLM2CLIPError("per-epoch validation needs caption embeddings; a jointly trained text tower has none")
    with process_group() as dist_info:
        return _train(dataset, embeddings_dir, Path(out), cfg or TrainCfg(), model_cfg, embed_dim, image_size,
                      progress, val, val_embeddings, stop_at, dist_info, tokenizer_dir)


def _joint_text(dataset, out: Path, cfg: TrainCfg, model_cfg, tokenizer_dir) -> tuple[dict, list[list[str]], Path]:
    """The clip77 baseline's text side: captions tokenized online for a text tower trained from scratch."""
    from llm2clip.defaults import smollm2_dir

    tok_dir = Path(tokenizer_dir or smollm2_dir())
    if not (tok_dir / "tokenizer.json").is_file():
        raise LLM2CLIPError(f"{tok_dir} has no tokenizer.json: pass a tokenizer folder")
    text_info = {"name": "clip-text-transformer", "tokenizer": str(tok_dir.resolve())}
    if model_cfg is None or model_cfg.text_tower is None:
        if not is_checkpoint(out):
            raise LLM2CLIPError("training without caption embeddings needs a model config with a text tower")
    keys = [[k for k in item.captions if k in cfg.caption_keys] for item in dataset]
    return text_info, keys, tok_dir


def _train(dataset, embeddings_dir, out: Path, cfg: TrainCfg, model_cfg, embed_dim, image_size, progress,
           val, val_embeddings, stop_at, info: DistInfo, tokenizer_dir=None) -> dict[str, Any]:
    main = info.is_main
    progress = progress and main
    tok_dir: Path | None = None
    caps: CaptionEmbeddings | None = None
    if embeddings_dir is None:
        text_info, keys, tok_dir = _joint_text(dataset, out, cfg, model_cfg, tokenizer_dir)
    else:
        caps = CaptionEmbeddings(embeddings_dir)
        text_info = {**caps.manifest["text_encoder"], "embeddings": str(Path(embeddings_dir).resolve())}
        keys = [[k for k in caps.keys_for(item.id) if k in cfg.caption_keys] for item in dataset]
    missing = [item.id for item, k in zip(dataset, keys, strict=True) if not k]
    if missing:
        raise DatasetError(f"{len(missing)} items have no caption embedding (e.g. {missing[0]!r}): run "
                           "`llm2clip train embed` on this dataset")

    state = load_state(out) if is_checkpoint(out) else None
    resumed = state is not None
    if state is not None:
        model, _ = load_checkpoint(out)
        cfg = TrainCfg(**{**asdict(cfg), **state["train_cfg"], "epochs": cfg.epochs})
        cfg.caption_keys = tuple(cfg.caption_keys)
    else:
        if caps is not None:
            model_cfg = model_cfg or default_model_cfg(embed_dim, caps.dim, image_size,
                                                       text_info["name"], caps.manifest["max_tokens"])
        torch.manual_seed(cfg.seed)
        model = LLM2CLIP(model_cfg)
    tokenizer = None
    if tok_dir is not None:
        if model.text_tower is None:
            raise LLM2CLIPError(f"{out} holds a checkpoint with an adapter: it needs --embeddings")
        tokenizer = Tokenizer(tok_dir, model.text_tower.cfg.context)
    elif model.cfg.adapter.in_dim != caps.dim:
        raise DatasetError(f"the adapter expects {model.cfg.adapter.in_dim}-d caption embeddings, the shards hold "
                           f"{caps.dim}-d: embed with the same text encoder")
    if cfg.batch_size % info.world_size:
        raise LLM2CLIPError(f"the global batch size {cfg.batch_size} does not split evenly over "
                            f"{info.world_size} processes: choose a multiple")
    if info.enabled and not cfg.freeze_bn:
        log.warning("BatchNorm in train mode normalizes by per-process batch statistics: %d processes do not "
                    "train the same model as one (use freeze_bn)", info.world_size)
    local_batch = cfg.batch_size // info.world_size
    set_drop_path(model, cfg.drop_path)
    model.to(info.device, memory_format=torch.channels_last)
    set_train_mode(model, cfg.freeze_bn)
    images = torch.from_numpy(load_images(dataset, model.cfg.preprocess, progress))
    val_set = _val_set(val, val_embeddings, caps, model.cfg.preprocess, progress) if val is not None and main \
        else None

    step_fn: nn.Module = _Step(model)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # frozen BN buffers never change, so there is nothing to broadcast before each forward
        step_fn = DistributedDataParallel(step_fn, device_ids=[info.device] if info.device.type == "cuda" else None,
                                          broadcast_buffers=not cfg.freeze_bn)
    # fused: one kernel over all tensors; the per-tensor loop costs as much as the tiny model's backward
    opt = torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.98), eps=1e-6, fused=True)
    base_lrs = [g["lr"] for g in opt.param_groups]
    steps_per_epoch = max(1, len(dataset) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    end = total if stop_at is None else min(total, stop_at)
    step, history = 0, []
    if state is not None:
        try:
            opt.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise BundleError(f"the optimizer state in {out} does not match this recipe's parameter groups "
                              f"({exc}): train into a new --out") from None
        step, history = state["step"], state["history"]
    if step >= end:
        log.info("%s is already trained for %d steps", out, step)
        return {"steps": step, "history": history, "resumed": resumed, "rank": info.rank}

    def save() -> None:
        barrier(info)
        if main:
            save_checkpoint(out, model, text_info, {
                "step": step, "history": history, "optimizer": opt.state_dict(), "train_cfg": asdict(cfg),
                "world_size": info.world_size,
            })
            (out / HISTORY).write_text(json.dumps(history, indent=1))
            try:
                from training.plots import save_curves

                save_curves(history, out / CURVES)
            except ImportError:
                log.warning("matplotlib is not installed: no %s (pip install '.[train]')", CURVES)
        barrier(info)

    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    mine = slice(info.rank * local_batch, (info.rank + 1) * local_batch)
    bar = tqdm(total=end, initial=step, desc="train clip", unit="step", disable=not progress)
    t_last, seen = time.perf_counter(), 0
    # stochastic depth reseeds the global generator per step; the caller's random state is left alone
    with torch.random.fork_rng(devices=[info.device] if info.device.type == "cuda" else [],
                               device_type=info.device.type):
        while step < end:
            epoch = step // steps_per_epoch
            perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed + epoch))
            for b in range(step % steps_per_epoch, steps_per_epoch):
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                picks = caption_picks(cfg.seed, step, len(idx))[mine]
                idx = idx[mine].tolist()
                pixels = normalize(images[idx], model.cfg.preprocess).to(info.device)
                chosen = [keys[i][int(p) % len(keys[i])] for i, p in zip(idx, picks, strict=True)]
                if tokenizer is not None:
                    ids, mask, _ = tokenizer([dataset.items[i].captions[k] for i, k in zip(idx, chosen, strict=True)])
                    text: tuple[torch.Tensor, ...] = (torch.from_numpy(ids).to(info.device),
                                                      torch.from_numpy(mask).to(info.device))
                else:
                    assert caps is not None
                    text = (torch.stack([caps.get(dataset.items[i].id, k) for i, k in zip(idx, chosen, strict=True)])
                            .float().to(info.device),)
                f = lr_factor(step, total, cfg.warmup_steps)
                for g, base in zip(opt.param_groups, base_lrs, strict=True):
                    g["lr"] = base * f
                torch.manual_seed(_seed(cfg.seed, step, info.rank))
                with autocast:
                    img_emb, txt_emb, logit_scale = step_fn(pixels, *text)
                loss = clip_loss(gather_with_grad(img_emb.float()), gather_with_grad(txt_emb.float()), logit_scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                seen += cfg.batch_size
                bar.update(1)
                epoch_end = step % steps_per_epoch == 0
                if step % cfg.log_every == 0 or step == end or epoch_end:
                    now = time.perf_counter()
                    rate = seen / (now - t_last)
                    entry = {"step": step, "epoch": epoch, "loss": round(float(loss.detach()), 5),
                             "logit_scale": round(float(model.logit_scale.detach().exp()), 3),
                             "img_s": round(rate, 1), "lr": cfg.lr * f}
                    if epoch_end and val_set is not None:
                        entry.update({f"val_{k}": round(v, 4) for k, v in
                                      evaluate_retrieval(model, *val_set, info.device, cfg.bf16).items()})
                        set_train_mode(model, cfg.freeze_bn)
                    history.append(entry)
                    bar.set_postfix(loss=f"{entry['loss']:.3f}", img_s=f"{rate:.1f}")
                    t_last, seen = time.perf_counter(), 0
                if step >= end:
                    break
            save()
    bar.close()
    return {"steps": step, "history": history, "resumed": resumed, "rank": info.rank}


def default_model_cfg(embed_dim: int, llm_dim: int, image_size: int, llm_name: str, max_tokens: int) -> ModelCfg:
    return ModelCfg(
        embed_dim=embed_dim,
        vision=VisionCfg(image_size=image_size),
        adapter=AdapterCfg(in_dim=llm_dim),
        text=TextCfg(llm=llm_name, max_tokens=max_tokens),
        preprocess=PreprocessCfg(size=image_size),
    )
