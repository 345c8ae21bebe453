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

Images are decoded and resized once into a uint8 cache (``training.images``). A backbone whose first blocks are
frozen (DINOv2 with ``trainable_blocks``) reads the tokens those blocks make from a disk cache built once
(``training.token_cache``): the steps run only the trainable blocks, the pool and the adapter.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from llm2clip.config import AdapterCfg, ModelCfg, PreprocessCfg, TextCfg, VisionCfg
from llm2clip.data import Dataset
from llm2clip.errors import BundleError, DatasetError, LLM2CLIPError
from llm2clip.model import LLM2CLIP
from llm2clip.tokenizer import Tokenizer
from llm2clip.vision import preprocess_for
from training.checkpoint import is_checkpoint, load_checkpoint, load_state, save_checkpoint
from training.clip_recipe import (
    caption_picks,
    clip_loss,
    drawable,
    geometry_loss,
    param_groups,
    set_drop_path,
    set_train_mode,
    step_seed,
)
from training.config import ModelShape, TrainCfg
from training.distributed import DistInfo, barrier, gather_with_grad, process_group
from training.embed import CaptionEmbeddings
from training.images import load_images, normalize
from training.schedule import lr_factor
from training.token_cache import TOKEN_CACHE, TokenCache

log = logging.getLogger(__name__)

CURVES = "curves.png"
HISTORY = "history.json"


@dataclass
class Stage2Run:
    """What one stage-2 run trains on and where it writes; ``TrainCfg`` says how it trains.

    ``embeddings`` None: the model has a CLIP text tower (``model_cfg.text_tower``, the clip77 baseline) trained
    jointly on captions tokenized online with ``tokenizer_dir`` (default SmolLM2's). ``val`` with
    ``val_embeddings``: retrieval recall on long captions at the end of every epoch, recorded in the history.
    ``stop_at``: stop (with a checkpoint) once this many steps are done; a later run resumes.
    """

    dataset: Dataset
    embeddings: str | Path | None
    out: str | Path
    model_cfg: ModelCfg | None = None  # None: ``default_model_cfg`` of ``shape`` and the embeddings
    shape: ModelShape = field(default_factory=ModelShape)
    val: Dataset | None = None
    val_embeddings: str | Path | None = None
    stop_at: int | None = None
    tokenizer_dir: str | Path | None = None
    progress: bool = True
    token_cache: str | Path | None = None  # frozen-prefix token cache folder (default: ``out``/token_cache)


@dataclass
class _TextSide:
    """Where a run's caption vectors come from: stored LLM embeddings, or a tokenizer for a joint text tower."""

    info: dict[str, Any]  # recorded in the checkpoint, for export and eval
    keys: list[list[str]]  # per item, the caption keys a sample draws from
    caps: CaptionEmbeddings | None = None
    tok_dir: Path | None = None


class _Step(nn.Module):
    """The forward of one training step, as one module call so that DDP sees it."""

    def __init__(self, model: LLM2CLIP, start: int | None = None) -> None:
        super().__init__()
        self.model, self.start = model, start  # start: the images come as tokens entering this backbone block

    def forward(self, pixels: torch.Tensor, *text: torch.Tensor):
        if self.model.text_tower is not None:  # clip77: token ids and mask through the joint text tower
            txt = self.model.encode_text_tokens(*text)
        else:  # frozen LLM caption embeddings through the adapter
            txt = self.model.encode_text_embedding(text[0])
        if self.start is None:
            img = self.model.encode_image(pixels)
        else:  # "pixels" are the cached tokens entering backbone block ``start``
            img = self.model.encode_image_tokens(pixels, self.start)
        return img, txt, self.model.logit_scale


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


def _val_set(run: Stage2Run, caps: CaptionEmbeddings, preprocess: PreprocessCfg,
             progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    assert run.val is not None and run.val_embeddings is not None
    vcaps = CaptionEmbeddings(run.val_embeddings)
    if vcaps.manifest["text_encoder"].get("fingerprint") != caps.manifest["text_encoder"].get("fingerprint"):
        raise DatasetError(f"the validation embeddings in {run.val_embeddings} come from another text encoder "
                           "than the training embeddings: embed the validation set with the same one")
    missing = [item.id for item in run.val if "long" not in vcaps.keys_for(item.id)]
    if missing:
        raise DatasetError(f"{len(missing)} validation items have no long-caption embedding (e.g. "
                           f"{missing[0]!r}): run `llm2clip train embed` on the validation set")
    text = torch.stack([vcaps.get(item.id, "long") for item in run.val])
    return torch.from_numpy(load_images(run.val, preprocess, progress)), text


def train_clip(run: Stage2Run, cfg: TrainCfg | None = None) -> dict[str, Any]:
    """Train (or resume) a stage-2 checkpoint in ``run.out``; returns the final training summary.

    Under torchrun this joins the process group and trains data-parallel (see the module docstring).
    """
    if (run.val is None) != (run.val_embeddings is None):
        raise LLM2CLIPError("validation needs both the dataset and its caption embeddings")
    if run.embeddings is None and run.val is not None:
        raise LLM2CLIPError("per-epoch validation needs caption embeddings; a jointly trained text tower has none")
    with process_group() as dist_info:
        return Stage2Trainer(run, cfg or TrainCfg(), dist_info).fit()


def _text_side(run: Stage2Run, cfg: TrainCfg, out: Path) -> _TextSide:
    if run.embeddings is None:
        side = _joint_text(run, cfg, out)
    else:
        caps = CaptionEmbeddings(run.embeddings)
        side = _TextSide({**caps.manifest["text_encoder"], "embeddings": str(Path(run.embeddings).resolve())},
                         [drawable(caps.keys_for(item.id), cfg.caption_keys) for item in run.dataset],
                         caps=caps)
    unused = set(cfg.caption_keys) - {k for keys in side.keys for k in keys}
    if unused:
        raise DatasetError(f"caption keys {', '.join(sorted(unused))} are in no item's captions (or embeddings): "
                           "check --caption-keys against the dataset")
    missing = [item.id for item, k in zip(run.dataset, side.keys, strict=True) if not k]
    if missing:
        raise DatasetError(f"{len(missing)} items have no caption embedding (e.g. {missing[0]!r}): run "
                           "`llm2clip train embed` on this dataset")
    return side


def _joint_text(run: Stage2Run, cfg: TrainCfg, out: Path) -> _TextSide:
    """The clip77 baseline's text side: captions tokenized online for a text tower trained from scratch."""
    from llm2clip.defaults import smollm2_dir

    tok_dir = Path(run.tokenizer_dir or smollm2_dir())
    if not (tok_dir / "tokenizer.json").is_file():
        raise LLM2CLIPError(f"{tok_dir} has no tokenizer.json: pass a tokenizer folder")
    if (run.model_cfg is None or run.model_cfg.text_tower is None) and not is_checkpoint(out):
        raise LLM2CLIPError("training without caption embeddings needs a model config with a text tower")
    keys = [drawable(item.captions, cfg.caption_keys) for item in run.dataset]
    return _TextSide({"name": "clip-text-transformer", "tokenizer": str(tok_dir.resolve())}, keys, tok_dir=tok_dir)


class Stage2Trainer:
    """One stage-2 run on this process: the model, its optimizer and the data, set up (or restored from the
    checkpoint in ``run.out``) at construction; ``fit`` trains up to the run's last step."""

    def __init__(self, run: Stage2Run, cfg: TrainCfg, dist: DistInfo) -> None:
        self.run, self.dist = run, dist
        self.out = Path(run.out)
        self.progress = run.progress and dist.is_main
        self.text = _text_side(run, cfg, self.out)
        self.state = load_state(self.out) if is_checkpoint(self.out) else None
        self.cfg = cfg
        if self.state is not None:  # the checkpoint's recipe, trained for as many epochs as asked now
            self.cfg = TrainCfg(**{**asdict(cfg), **self.state["train_cfg"], "epochs": cfg.epochs,
                                   "cache_frozen_tokens": cfg.cache_frozen_tokens})  # speed, not the recipe
            self.cfg.caption_keys = tuple(self.cfg.caption_keys)
        self.model = self._model()
        self.tokenizer = self._tokenizer()
        self._place_model()
        self.images = torch.from_numpy(load_images(run.dataset, self.model.cfg.preprocess, self.progress))
        self.tokens = TokenCache.open(self.model, self.images.numpy(), [item.id for item in run.dataset],
                                      Path(run.token_cache or self.out / TOKEN_CACHE), self.cfg, dist)
        self.cache_start = None if self.tokens is None else self.tokens.start
        self.val_set = None
        if run.val is not None and dist.is_main:
            assert self.text.caps is not None
            self.val_set = _val_set(run, self.text.caps, self.model.cfg.preprocess, self.progress)
        self.step_fn = self._step_module()
        # fused: one kernel over all tensors; the per-tensor loop costs as much as the tiny model's backward
        self.opt = torch.optim.AdamW(param_groups(self.model, self.cfg), betas=(0.9, 0.98), eps=1e-6, fused=True)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.steps_per_epoch = max(1, len(run.dataset) // self.cfg.batch_size)
        self.total = self.steps_per_epoch * self.cfg.epochs
        self.end = self.total if run.stop_at is None else min(self.total, run.stop_at)
        self.step, self.history = self._restore()
        self.lr_now = 0.0  # this step's factor of the base learning rates

    def _model(self) -> LLM2CLIP:
        if self.state is not None:
            return load_checkpoint(self.out)[0]
        model_cfg, caps = self.run.model_cfg, self.text.caps
        if caps is not None and model_cfg is None:
            shape = self.run.shape
            vision = VisionCfg(arch=shape.vision_arch, trainable_blocks=shape.trainable_blocks, depth=shape.vision_depth)
            model_cfg = default_model_cfg(shape.embed_dim, caps.dim, shape.image_size, self.text.info["name"],
                                          caps.manifest["max_tokens"], vision)
        torch.manual_seed(self.cfg.seed)
        return LLM2CLIP(model_cfg)

    def _tokenizer(self) -> Tokenizer | None:
        model, caps = self.model, self.text.caps
        if self.text.tok_dir is not None:
            if model.text_tower is None:
                raise LLM2CLIPError(f"{self.out} holds a checkpoint with an adapter: it trains on caption "
                                    "embeddings, give them")
            return Tokenizer(self.text.tok_dir, model.text_tower.cfg.context)
        assert caps is not None
        if model.cfg.adapter.in_dim != caps.dim:
            raise DatasetError(f"the adapter expects {model.cfg.adapter.in_dim}-d caption embeddings, the shards "
                               f"hold {caps.dim}-d: embed with the same text encoder")
        return None

    def _place_model(self) -> None:
        cfg, dist = self.cfg, self.dist
        if cfg.batch_size % dist.world_size:
            raise LLM2CLIPError(f"the global batch size {cfg.batch_size} does not split evenly over "
                                f"{dist.world_size} processes: choose a multiple")
        if dist.enabled and not cfg.freeze_bn:
            log.warning("BatchNorm in train mode normalizes by per-process batch statistics: %d processes do "
                        "not train the same model as one (use freeze_bn)", dist.world_size)
        self.local_batch = cfg.batch_size // dist.world_size
        set_drop_path(self.model, cfg.drop_path)
        self.model.to(dist.device, memory_format=torch.channels_last)
        set_train_mode(self.model, cfg.freeze_bn)

    def _step_module(self) -> nn.Module:
        if not self.dist.enabled:
            return _Step(self.model, self.cache_start)
        from torch.nn.parallel import DistributedDataParallel

        device = self.dist.device
        # frozen BN buffers never change, so there is nothing to broadcast before each forward
        return DistributedDataParallel(_Step(self.model, self.cache_start),
                                       device_ids=[device] if device.type == "cuda" else None,
                                       broadcast_buffers=not self.cfg.freeze_bn)

    def _restore(self) -> tuple[int, list[dict[str, Any]]]:
        if self.state is None:
            return 0, []
        try:
            self.opt.load_state_dict(self.state["optimizer"])
        except ValueError as exc:
            raise BundleError(f"the optimizer state in {self.out} does not match this recipe's parameter "
                              f"groups ({exc}): train into a new checkpoint folder") from None
        return self.state["step"], self.state["history"]

    def summary(self) -> dict[str, Any]:
        return {"steps": self.step, "history": self.history, "resumed": self.state is not None,
                "rank": self.dist.rank}

    def fit(self) -> dict[str, Any]:
        if self.step >= self.end:
            log.info("%s is already trained for %d steps", self.out, self.step)
            return self.summary()
        device = self.dist.device
        self.bar = tqdm(total=self.end, initial=self.step, desc="train clip", unit="step", disable=not self.progress)
        self.t_last, self.seen = time.perf_counter(), 0
        # stochastic depth reseeds the global generator per step; the caller's random state is left alone
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
            while self.step < self.end:
                self._epoch()
        self.bar.close()
        return self.summary()

    def _epoch(self) -> None:
        """The rest of the current epoch (all of it, unless resumed mid-epoch), then a checkpoint."""
        cfg, spe = self.cfg, self.steps_per_epoch
        epoch = self.step // spe
        perm = torch.randperm(len(self.run.dataset), generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for b in range(self.step % spe, spe):
            loss = self._train_step(*self._batch(perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]))
            self.step += 1
            self.seen += cfg.batch_size
            self.bar.update(1)
            epoch_end = self.step % spe == 0
            if self.step % cfg.log_every == 0 or self.step == self.end or epoch_end:
                self._record(loss, epoch, validate=epoch_end)
            if self.step >= self.end:
                break
        self._save()

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """This rank's share of a global batch: pixels, and caption embeddings or token ids with their mask."""
        mine = slice(self.dist.rank * self.local_batch, (self.dist.rank + 1) * self.local_batch)
        picks = caption_picks(self.cfg.seed, self.step, len(idx))[mine]
        rows = idx[mine].tolist()
        device, items, keys = self.dist.device, self.run.dataset.items, self.text.keys
        pixels = (normalize(self.images[rows], self.model.cfg.preprocess) if self.tokens is None
                  else self.tokens.batch(rows)).to(device)  # or the frozen blocks' cached tokens
        chosen = [keys[i][int(p) % len(keys[i])] for i, p in zip(rows, picks, strict=True)]
        if self.tokenizer is not None:
            ids, mask, _ = self.tokenizer([items[i].captions[k] for i, k in zip(rows, chosen, strict=True)])
            return pixels, (torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        caps = self.text.caps
        assert caps is not None
        return pixels, (torch.stack([caps.get(items[i].id, k) for i, k in zip(rows, chosen, strict=True)])
                        .float().to(device),)

    def _train_step(self, pixels: torch.Tensor, text: tuple[torch.Tensor, ...]) -> torch.Tensor:
        self.lr_now = lr_factor(self.step, self.total, self.cfg.warmup_steps)
        for g, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * self.lr_now
        torch.manual_seed(step_seed(self.cfg.seed, self.step, self.dist.rank))
        with torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            img_emb, txt_emb, logit_scale = self.step_fn(pixels, *text)
        loss = clip_loss(gather_with_grad(img_emb.float()), gather_with_grad(txt_emb.float()), logit_scale)
        if self.cfg.text_geometry and self.tokenizer is None:  # this process's share of the batch only
            loss = loss + self.cfg.text_geometry * geometry_loss(text[0], txt_emb.float())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    def _record(self, loss: torch.Tensor, epoch: int, validate: bool) -> None:
        """A history entry; at an epoch end, with the validation recall when there is a validation set."""
        rate = self.seen / (time.perf_counter() - self.t_last)
        entry = {"step": self.step, "epoch": epoch, "loss": round(float(loss.detach()), 5),
                 "logit_scale": round(float(self.model.logit_scale.detach().exp()), 3),
                 "img_s": round(rate, 1), "lr": self.cfg.lr * self.lr_now}
        if validate and self.val_set is not None:
            metrics = evaluate_retrieval(self.model, *self.val_set, self.dist.device, self.cfg.bf16)
            entry.update({f"val_{k}": round(v, 4) for k, v in metrics.items()})
            set_train_mode(self.model, self.cfg.freeze_bn)
        self.history.append(entry)
        self.bar.set_postfix(loss=f"{entry['loss']:.3f}", img_s=f"{rate:.1f}")
        self.t_last, self.seen = time.perf_counter(), 0

    def _save(self) -> None:
        barrier(self.dist)
        if self.dist.is_main:
            save_checkpoint(self.out, self.model, self.text.info, {
                "step": self.step, "history": self.history, "optimizer": self.opt.state_dict(),
                "train_cfg": asdict(self.cfg), "world_size": self.dist.world_size,
            })
            (self.out / HISTORY).write_text(json.dumps(self.history, indent=1))
            try:
                from training.plots import save_curves

                save_curves(self.history, self.out / CURVES)
            except ImportError:
                log.warning("matplotlib is not installed: no %s (pip install '.[train]')", CURVES)
        barrier(self.dist)


def default_model_cfg(embed_dim: int, llm_dim: int, image_size: int, llm_name: str, max_tokens: int,
                      vision: VisionCfg | None = None) -> ModelCfg:
    """``vision`` (default EfficientNet-Lite0) at ``image_size``, normalised as its pretrained backbone expects."""
    vision = replace(vision or VisionCfg(), image_size=image_size)
    return ModelCfg(embed_dim=embed_dim, vision=vision, adapter=AdapterCfg(in_dim=llm_dim),
                    text=TextCfg(llm=llm_name, max_tokens=max_tokens), preprocess=preprocess_for(vision))
