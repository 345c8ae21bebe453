"""Stage 2's frozen-prefix token cache: the tokens a frozen run of backbone blocks makes, computed once per image.

With DINOv2 and ``trainable_blocks`` N, blocks 0..depth-N-1 (and the embeddings) never change, yet every epoch
would recompute them for every image. ``TokenCache.open`` computes once the tokens entering the first trainable
block, (N_images, 1 + HW, 384), stores them as a float16 ``.npy`` memory map, and the training steps start from
them (``LLM2CLIP.encode_image_tokens``): only the trainable blocks, the final norm, the pool and the adapter run.
The model is unchanged, so the checkpoint still holds the whole tower, frozen blocks included.

A cache file is named by the sha256 of everything its tokens depend on: the frozen weights, the image size and
preprocessing, the first trainable block, the compute precision, the item ids and the images' pixels. A changed
one gives another name, so a stale cache is never read, and runs that share them (seeds of one row) can share
a cache folder. The file is written under a temporary name and renamed when complete: an interrupted build is
redone, never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llm2clip.errors import LLM2CLIPError
from llm2clip.model import LLM2CLIP
from training.config import TrainCfg
from training.distributed import DistInfo, barrier
from training.images import normalize

log = logging.getLogger(__name__)

TOKEN_CACHE = "token_cache"  # the default cache folder inside a run's output folder
DTYPE = np.float16  # numpy has no bf16; the residual stream's values (|x| < ~1e3) fit float16's range
BUILD_BATCH = 32


def frozen_weights(model: LLM2CLIP, start: int) -> dict[str, torch.Tensor]:
    """The backbone's parameters and buffers below block ``start``: the embeddings and blocks 0..start-1."""
    backbone = model.visual.backbone
    return {k: v for k, v in backbone.state_dict().items() if backbone.layer_of(k) <= start}


def cache_key(model: LLM2CLIP, start: int, images: np.ndarray, ids: list[str], bf16: bool) -> str:
    """sha256 of everything the cached tokens depend on (see the module docstring)."""
    h = hashlib.sha256()
    cfg = model.cfg
    meta = {"arch": cfg.vision.arch, "image_size": cfg.vision.image_size, "start": start, "bf16": bf16,
            "preprocess": [cfg.preprocess.resize, list(cfg.preprocess.mean), list(cfg.preprocess.std)],
            "dtype": np.dtype(DTYPE).name, "ids": ids}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name, tensor in sorted(frozen_weights(model, start).items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


@torch.no_grad()
def build_tokens(model: LLM2CLIP, images: np.ndarray, start: int, path: Path, bf16: bool,
                 progress: bool | None = None) -> None:
    """Write the tokens entering block ``start`` of every image (uint8 NHWC) to the ``.npy`` file ``path``,
    computed on the model's device. ``progress`` None: a progress bar on a terminal only (tqdm's choice)."""
    device = next(model.parameters()).device
    backbone, preprocess = model.visual.backbone, model.cfg.preprocess
    # no train/eval switch: the frozen blocks are in eval mode whenever the tower trains (``VisionTower.train``)
    first = backbone.forward_prefix(normalize(torch.from_numpy(images[:1]), preprocess).to(device), start)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPE, shape=(len(images), *first.shape[1:]))
    bar = tqdm(total=len(images), desc="cache frozen tokens", unit="img", disable=None if progress is None else not progress)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for b in range(0, len(images), BUILD_BATCH):
            pixels = normalize(torch.from_numpy(images[b : b + BUILD_BATCH]), preprocess).to(device)
            tokens = backbone.forward_prefix(pixels, start).float()
            if not torch.isfinite(tokens).all() or tokens.abs().max() > np.finfo(DTYPE).max:
                raise LLM2CLIPError(f"the frozen blocks' tokens do not fit {np.dtype(DTYPE).name}: train "
                                    "without the token cache (--no-cache-frozen-tokens)")
            out[b : b + len(pixels)] = tokens.cpu().numpy().astype(DTYPE)
            bar.update(len(pixels))
    bar.close()
    out.flush()
    del out
    os.replace(tmp, path)


class TokenCache:
    """The cached tokens of a run's training images, read per batch (``batch``) for ``encode_image_tokens``."""

    def __init__(self, path: Path, start: int) -> None:
        self.path, self.start = path, start
        self.tokens = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, rows: list[int]) -> torch.Tensor:
        """float32 tokens of these images, in this order (the residual stream's dtype in training)."""
        return torch.from_numpy(np.asarray(self.tokens[rows], dtype=np.float32))

    @classmethod
    def open(cls, model: LLM2CLIP, images: np.ndarray, ids: list[str], folder: Path, cfg: TrainCfg,
             dist: DistInfo) -> TokenCache | None:
        """The cache for this model and these images, built (by rank 0) when missing; None when the run does
        not use one (``cfg.cache_frozen_tokens`` off, or no frozen prefix of blocks to cache)."""
        start = model.visual.frozen_prefix
        if not cfg.cache_frozen_tokens or start == 0:
            return None
        if len(ids) != len(images):
            raise LLM2CLIPError(f"{len(ids)} item ids for {len(images)} images")
        path = Path(folder) / f"tokens-{cache_key(model, start, images, ids, cfg.bf16)[:32]}.npy"
        if dist.is_main and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            log.info("caching the tokens of frozen blocks 0..%d for %d images in %s", start - 1, len(images), path)
            build_tokens(model, images, start, path, cfg.bf16)
        barrier(dist)
        cache = cls(path, start)
        if len(cache) != len(images):
            raise LLM2CLIPError(f"{path} holds {len(cache)} images, not {len(images)}: delete it")
        return cache
