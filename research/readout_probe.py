"""Probe: is it the loss or the features? One pool on frozen DINOv2 maps, trained two ways to the oracle.

Usage: python -m research.readout_probe --repro DIR [--depth 8] [--epochs 30] [--loss cosine,clip,adapter] [--out F]

With the oracle text side (``research.oracle_text_side``), every vision side tried so far tells at most ~0.69
of the val split's near twins apart, while its training loss falls to ~0.05: contrast against 63 random
scenes never asks for the detail a twin needs. This trains the stage-2 attention pool (``AttentionPool``, no
adapter) on DINOv2's locked maps after ``--depth`` blocks of the train split's images, straight to each
scene's oracle long vector (``oracle_vector``), with one of two losses on the same features, seed and steps:
- ``cosine``: regression, 1 - cos(pool(image), vector): each scene must land on its own vector, so two
  scenes that differ in one object must land apart;
- ``clip``: stage 2's symmetric InfoNCE with CLIP's learned temperature, the fixed vectors as the text side;
- ``adapter``: the same InfoNCE with stage 2's text side, LLM2CLIP's adapter (``llm2clip.adapter.Adapter``,
  residual MLP blocks into the 256-wide joint space) trained with the pool on the vectors, as the oracle run
  (``research.oracle_text_side``) trains it.
Each is scored on the chosen split's near twins and long-caption R@1 as the oracle run scores them
(``training.eval``). Regression well above contrast says the loss is what caps twins; ``adapter`` below
``clip`` says the trained text side is what loses them; all at the same level say the features do. Val by default: no choice is made here on test.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from llm2clip.adapter import Adapter
from llm2clip.cliargs import positive_int
from llm2clip.config import AdapterCfg
from llm2clip.data import Dataset, read_dataset
from llm2clip.dinov2 import DEPTH
from llm2clip.vision import AttentionPool
from research.oracle_text_side import DIM, oracle_vector
from training.clip_recipe import clip_loss
from training.eval import retrieval_metrics, twin_accuracy, twin_pairs

SIZE = 224
LOSSES = ("cosine", "clip", "adapter")
JOINT = 256  # the repro's joint width, where the adapter maps the vectors


def dinov2_maps(ds: Dataset, depth: int, batch: int = 32) -> torch.Tensor:
    """DINOv2's patch maps (N, 384, 16, 16) after ``depth`` blocks and its final LayerNorm, in bfloat16."""
    from llm2clip.config import VisionCfg
    from llm2clip.vision import Dinov2Backbone, preprocess_for
    from training.images import load_images, normalize

    pre = preprocess_for(VisionCfg(arch="dinov2-s14", image_size=SIZE))
    backbone = Dinov2Backbone(SIZE, pretrained=True, depth=depth).eval()
    images = torch.from_numpy(load_images(ds, pre, progress=False))
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for b in tqdm(range(0, len(images), batch), desc=f"dinov2 maps ({ds.root.name})", unit="batch"):
            out.append(backbone(normalize(images[b:b + batch], pre)).to(torch.bfloat16))
    return torch.cat(out)


def targets(ds: Dataset) -> torch.Tensor:
    return torch.from_numpy(np.stack([oracle_vector(item.meta, long=True) for item in ds.items]))


class TextSide(torch.nn.Module):
    """The vectors as the loss sees them: fixed (unit vectors), or through a trained LLM2CLIP adapter."""

    def __init__(self, trained: bool) -> None:
        super().__init__()
        self.adapter = Adapter(AdapterCfg(in_dim=DIM), JOINT) if trained else None

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors if self.adapter is None else F.normalize(self.adapter(vectors), dim=-1)


def train_pool(maps: torch.Tensor, vectors: torch.Tensor, loss: str, epochs: int,
               seed: int) -> tuple[AttentionPool, TextSide]:
    """The stage-2 pool (and the text side) trained on ``maps`` -> ``vectors`` with ``loss``, AdamW at stage 2's
    lr and batch."""
    torch.manual_seed(seed)
    text = TextSide(trained=loss == "adapter")
    pool = AttentionPool(maps.shape[1], 256, 4, maps.shape[-1], JOINT if text.adapter is not None else DIM)
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    opt = torch.optim.AdamW([*pool.parameters(), *text.parameters(), scale], lr=5e-4, weight_decay=0.05)
    steps = epochs * (len(maps) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-4, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc=f"pool ({loss})", unit="step")
    for _ in range(epochs):
        order = torch.randperm(len(maps), generator=gen)
        for b in range(0, len(order) - 63, 64):
            idx = order[b:b + 64]
            img = F.normalize(pool(maps[idx].float()), dim=-1)
            txt = text(vectors[idx])
            value = (1 - (img * txt).sum(-1)).mean() if loss == "cosine" else clip_loss(img, txt, scale)
            opt.zero_grad()
            value.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{value.item():.3f}", refresh=False)
    bar.close()
    return pool.eval(), text.eval()


def score(pool: AttentionPool, text: TextSide, maps: torch.Tensor, ds: Dataset) -> dict[str, float]:
    with torch.no_grad():
        img = F.normalize(pool(maps.float()), dim=-1).numpy()
        txt = text(targets(ds)).numpy()
    long = retrieval_metrics(txt, img)
    twins = twin_accuracy(txt, img, twin_pairs(ds))
    return {"t2i_r1": long["t2i_r1"], "i2t_r1": long["i2t_r1"], "twin_t2i": twins["t2i"], "twin_i2t": twins["i2t"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repro", required=True, type=Path, help="a repro folder with data/train and data/<split>")
    ap.add_argument("--split", default="val", choices=("val", "test"), help="where twins are scored (default val)")
    ap.add_argument("--depth", type=positive_int, default=8, help=f"DINOv2 blocks before the pool (1..{DEPTH}, default 8)")
    ap.add_argument("--epochs", type=positive_int, default=30, help="passes over the train split (default 30)")
    ap.add_argument("--loss", default="cosine,clip,adapter",
                    help="read-outs to train, comma-separated: cosine, clip, adapter (default: all three)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the scores as JSON here")
    args = ap.parse_args(argv)
    losses = [s for s in args.loss.split(",") if s]
    if not losses or set(losses) - set(LOSSES):
        ap.error(f"--loss takes {', '.join(LOSSES)}, not {args.loss!r}")
    if args.depth > DEPTH:
        ap.error(f"--depth is a number of DINOv2's {DEPTH} blocks, not {args.depth}")
    train, test = read_dataset(args.repro / "data" / "train"), read_dataset(args.repro / "data" / args.split)
    train_maps, test_maps, vectors = dinov2_maps(train, args.depth), dinov2_maps(test, args.depth), targets(train)
    result: dict[str, object] = {"split": args.split, "depth": args.depth, "epochs": args.epochs, "seed": args.seed,
                                 "train_scenes": len(train), f"{args.split}_scenes": len(test)}
    for loss in losses:
        result[loss] = score(*train_pool(train_maps, vectors, loss, args.epochs, args.seed), test_maps, test)
        sys.stdout.write(f"{loss}: " + ", ".join(f"{k} {v:.3f}" for k, v in result[loss].items()) + "\n")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
