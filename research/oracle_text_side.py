"""Can the vision side tell the near twins apart when the text side keeps every binding?

Usage: python -m research.oracle_text_side --repro DIR --out OUT [--epochs N] [--split val|test]
       [--vision-arch A --image-size S --trainable-blocks K --vision-depth D --token-cache DIR]

The repro's near twins that differ in an object's cell, size or orientation stay at chance in every row,
and so does every text side on its own (see docs/results/repro/pre-protocol/FINDINGS.md). That leaves open whether the
vision tower could see them at all. This run replaces the text encoder by an oracle: each caption's
"embedding" is built from its scene graph: the object count, the background, counts of each class, of
each colour, cell, size and orientation, and every binding explicit (counts of (class, colour),
(class, cell), (class, size), (class, orientation)); a short caption's holds only what the short caption
names: count, classes, background. ``--bound-only`` leaves out the unbound counts. Stage 2 is the repro's own:
same scenes, vision tower, recipe, steps and seed (``research.repro_config.ReproCfg``), trained with
``train_clip`` on these vectors. The test split's near twins are then scored with the trained vision
tower against the oracle's caption vectors through the trained adapter. ``--split val`` scores the val split's
near twins instead: vision sides are chosen there, and test is scored once for the chosen one.
``--vision-arch``, ``--image-size``, ``--trainable-blocks`` and ``--vision-depth`` replace settings of the repro's
vision tower (``ReproCfg``: DINOv2 ViT-S/14 at 224 px, locked, read at block 8; another ``--vision-arch`` brings
none of its settings); with DINOv2 and ``--trainable-blocks`` the frozen blocks' tokens come from a disk cache
(``--token-cache``, shared by runs on the same images).

An oracle row well above chance on cell, size and orientation means the vision side can learn the
bindings at this scale and only the text side is missing them; an oracle row at chance means the vision
side cannot either.

Writes OUT/embeddings/train/ (a caption-embedding folder, as `llm2clip train embed` would), OUT/ckpt/
(the stage-2 checkpoint) and OUT/oracle.json. Reruns resume. Takes about as long as one repro row's
stage 2 (a few minutes on 2 cores with the repro's locked tower; about 15 with EfficientNet-Lite0 trained).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from llm2clip.cliargs import non_negative_int, positive_float, positive_int
from llm2clip.config import VISION_ARCHS, AdapterCfg, TextCfg, VisionCfg
from llm2clip.data import CLASSES, COLOURS, TEXTURES, Dataset, read_dataset
from llm2clip.dinov2 import DEPTH as DINOV2_DEPTH
from research.fact_probe import attribute_value, bound_values
from research.repro_config import ReproCfg, stage2_cfg, vision_cfg
from training.config import TrainCfg, drawn_keys
from training.embed import FORMAT, MANIFEST

MAX_OBJECTS = 9
BOUND = bound_values()


def _layout(long: bool) -> dict[str, int]:
    names = [f"count:{n}" for n in range(1, MAX_OBJECTS + 1)]
    names += [f"background:{c}" for c in COLOURS] + [f"texture:{t}" for t in TEXTURES]
    names += [f"class:{c}" for c in CLASSES]
    if long:
        names += [f"{g}:{v}" for g, values in BOUND.items() for v in values]
        names += [f"{c}|{g}:{v}" for g, values in BOUND.items() for c in CLASSES for v in values]
    return {n: i for i, n in enumerate(names)}


LONG, SHORT = _layout(True), _layout(False)
DIM = len(LONG)  # short vectors are zero past the short layout: one adapter input width


def oracle_vector(meta: dict[str, Any], long: bool, presence: bool = True) -> np.ndarray:
    """The scene graph as a unit vector: what a text side that keeps every fact and every binding would
    give. ``presence`` False leaves out the unbound counts of each colour, cell, size and orientation (a
    long vector then holds them only inside their (class, value) bindings)."""
    layout = LONG if long else SHORT
    v = np.zeros(DIM, np.float32)
    objs = meta["objects"]
    v[layout[f"count:{len(objs)}"]] = 1
    v[layout[f"background:{meta['background']['colour']}"]] = 1
    v[layout[f"texture:{meta['background']['texture']}"]] = 1
    for o in objs:
        v[layout[f"class:{o['class']}"]] += 1
        if long:
            for g in BOUND:
                value = attribute_value(o, g)
                if presence:
                    v[layout[f"{g}:{value}"]] += 1
                v[layout[f"{o['class']}|{g}:{value}"]] += 1
    return v / np.linalg.norm(v)


def write_embeddings(ds: Dataset, out: Path, presence: bool = True) -> Path:
    """A caption-embedding folder in `llm2clip train embed`'s format: each item's long and short vectors."""
    if (out / MANIFEST).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    keys, rows = [], []
    for item in ds.items:
        if not isinstance(item.meta, dict) or "objects" not in item.meta:
            raise SystemExit(f"item {item.id!r} has no scene graph: the oracle needs a scene corpus")
        for key in ("long", "short"):
            keys.append([item.id, key])
            rows.append(oracle_vector(item.meta, key == "long", presence))
    save_file({"embeddings": torch.from_numpy(np.stack(rows))}, str(out / "shard-00000.safetensors"))
    (out / "shard-00000.json").write_text(json.dumps(keys))
    spec = hashlib.sha256(json.dumps([list(LONG), presence]).encode()).hexdigest()
    manifest = {"format": FORMAT, "text_encoder": {"name": "oracle-scene-graph", "path": "", "fingerprint": spec},
                "max_tokens": 0, "add_special_tokens": False, "dtype": "fp32", "dataset": ds.root.name,
                "count": len(keys), "shard_size": len(keys), "dim": DIM, "shards": ["shard-00000"],
                "complete": True, "seconds": 0.0}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def evaluate_oracle(ckpt: Path, test: Dataset, presence: bool = True) -> dict[str, Any]:
    from training.checkpoint import load_checkpoint
    from training.clip import load_images, normalize
    from training.eval import retrieval_metrics, twin_accuracy, twin_breakdown, twin_hits, twin_pairs

    model, _ = load_checkpoint(ckpt)
    images = torch.from_numpy(load_images(test, model.cfg.preprocess))
    img, txt = {}, {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        img_chunks = [model.encode_image(normalize(images[b : b + 64], model.cfg.preprocess))
                      for b in range(0, len(images), 64)]
        img = torch.cat(img_chunks).float().numpy()
        for key in ("long", "short"):
            vec = torch.from_numpy(np.stack([oracle_vector(it.meta, key == "long", presence) for it in test.items]))
            txt[key] = model.encode_text_embedding(vec).float().numpy()
    pairs = twin_pairs(test)
    sims = txt["long"] @ img.T
    hits = {"t2i_r1": sims.argmax(1) == np.arange(len(img)), "i2t_r1": sims.argmax(0) == np.arange(len(img)),
            **{f"twin_{k}": v for k, v in twin_hits(txt["long"], img, pairs).items()}}
    return {"long": retrieval_metrics(txt["long"], img), "short": retrieval_metrics(txt["short"], img),
            "near_twin": {"n_pairs": len(pairs), "long": twin_accuracy(txt["long"], img, pairs),
                          "long_by": twin_breakdown(txt["long"], img, test, pairs)},
            # per query, for paired tests between vision sides (research.compare_oracles)
            "per_query": {"twin_pairs": [list(p) for p in pairs], **{k: v.astype(int).tolist() for k, v in hits.items()}}}


def _scale(value: str) -> float:
    try:
        scale = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 1 <= scale <= 100:
        raise argparse.ArgumentTypeError("must lie between 1 and 100 (the loss clamps the scale at 100)")
    return scale


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Uses the scenes of a `llm2clip repro --out DIR` run (DIR/data).")
    ap.add_argument("--repro", required=True, type=Path, help="a `llm2clip repro --out` folder (its data/)")
    ap.add_argument("--out", required=True, type=Path, help="work folder for this run (resumed)")
    ap.add_argument("--epochs", type=positive_int, help="override the repro preset's stage-2 epochs")
    ap.add_argument("--split", choices=("val", "test"), default="test",
                    help="the split whose near twins are scored: val to choose a vision side, test once for the chosen")
    ap.add_argument("--vision-arch", choices=VISION_ARCHS, help="vision backbone (default: the repro's)")
    ap.add_argument("--image-size", type=positive_int, help="input side of the vision tower (default: the repro's)")
    ap.add_argument("--trainable-blocks", type=non_negative_int,
                    help="train only the backbone's last N blocks (0: locked, LiT); default: the repro's")
    ap.add_argument("--vision-depth", type=positive_int,
                    help="dinov2-s14 only: keep its first K of 12 blocks and pool block K's tokens (default: the repro's)")
    ap.add_argument("--pool-heads", type=positive_int, help=f"heads of the attention pool (default {VisionCfg.pool_heads})")
    ap.add_argument("--pool-queries", type=positive_int,
                    help="learned queries of the attention pool, concatenated (default 1: CLIP's mean-token query)")
    ap.add_argument("--logit-scale", type=_scale,
                    help="the CLIP loss's initial logit scale (1 / temperature; default CLIP's 1/0.07 = 14.3, max 100)")
    ap.add_argument("--caption-keys", type=drawn_keys, help="the captions stage 2 draws from, comma-separated, a "
                    "key listed k times drawn k times as often (default: the repro's, long,short)")
    ap.add_argument("--seed", type=non_negative_int, help="stage 2's seed (default: the repro's, 0)")
    ap.add_argument("--adapter-blocks", type=non_negative_int,
                    help=f"residual MLP blocks of the adapter (default {AdapterCfg.blocks}; 0: LayerNorm and a linear map)")
    ap.add_argument("--text-geometry", type=float, help="weight of stage 2's term that keeps the adapter's "
                    "cosines within a batch close to its input's (default 0: off)")
    ap.add_argument("--backbone-lr", type=positive_float,
                    help="learning rate of the top trained backbone block, lower ones decayed by the preset's layer "
                         "decay (default: the preset's lr x layer decay); with --trainable-blocks N > 0")
    ap.add_argument("--token-cache", type=Path, help="frozen-prefix token cache folder (default: OUT/ckpt/token_cache)")
    ap.add_argument("--bound-only", action="store_true",
                    help="long vectors without the unbound counts of each colour, cell, size and orientation: "
                         "the vision side must learn every (class, value) conjunction")
    return ap


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, with the options given."""
    options = {"--epochs": args.epochs, "--split": args.split if args.split != "test" else None,
               "--vision-arch": args.vision_arch, "--image-size": args.image_size,
               "--trainable-blocks": args.trainable_blocks, "--vision-depth": args.vision_depth,
               "--pool-heads": args.pool_heads, "--pool-queries": args.pool_queries, "--logit-scale": args.logit_scale,
               "--caption-keys": ",".join(args.caption_keys) if args.caption_keys else None,
               "--adapter-blocks": args.adapter_blocks, "--text-geometry": args.text_geometry, "--seed": args.seed,
               "--backbone-lr": args.backbone_lr}
    return ("python -m research.oracle_text_side --repro DIR --out OUT"
            + "".join(f" {k} {v}" for k, v in options.items() if v is not None)
            + (" --bound-only" if args.bound_only else ""))


def _vision(args: argparse.Namespace, cfg: ReproCfg) -> VisionCfg:
    """The repro's vision tower, with the options given in place of its settings."""
    base = vision_cfg(cfg)
    if args.vision_arch is not None and args.vision_arch != base.arch:  # another backbone: none of its settings
        base = VisionCfg(arch=args.vision_arch)
    given = {"trainable_blocks": args.trainable_blocks, "depth": args.vision_depth, "pool_heads": args.pool_heads,
             "pool_queries": args.pool_queries}
    return replace(base, **{k: v for k, v in given.items() if v is not None})


def train_cfg(args: argparse.Namespace, base: TrainCfg) -> TrainCfg:
    """The repro's stage-2 recipe ``base`` with the options given in place of its settings."""
    given = {"caption_keys": args.caption_keys, "text_geometry": args.text_geometry, "seed": args.seed,
             "backbone_lr": args.backbone_lr}
    return replace(base, **{k: v for k, v in given.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    ap = _parser()
    args = ap.parse_args(argv)
    arch = args.vision_arch or ReproCfg.vision_arch
    if args.vision_depth is not None and (arch != "dinov2-s14" or args.vision_depth > DINOV2_DEPTH):
        ap.error(f"--vision-depth is a number of dinov2-s14's blocks, 1 to {DINOV2_DEPTH}: give --vision-arch "
                 "dinov2-s14 with it")

    from training.clip import Stage2Run, default_model_cfg, train_clip

    cfg = ReproCfg()
    epochs = args.epochs or cfg.epochs
    train, test = read_dataset(args.repro / "data" / "train"), read_dataset(args.repro / "data" / args.split)
    presence = not args.bound_only
    emb = write_embeddings(train, args.out / "embeddings" / "train", presence)
    tcfg = train_cfg(args, stage2_cfg(cfg, len(train), epochs))
    vision = _vision(args, cfg)
    mcfg = default_model_cfg(cfg.embed_dim, DIM, args.image_size or cfg.image_size, "oracle-scene-graph",
                             TextCfg.max_tokens, vision)
    if args.adapter_blocks is not None:
        mcfg.adapter = replace(mcfg.adapter, blocks=args.adapter_blocks)
    if args.logit_scale:
        mcfg.init_logit_scale = math.log(args.logit_scale)
    run = Stage2Run(train, emb, args.out / "ckpt", model_cfg=mcfg, token_cache=args.token_cache)
    summary = train_clip(run, tcfg)
    v = mcfg.vision
    result = {"command": _command(args), "split": args.split,
              "vision": {"arch": v.arch, "image_size": v.image_size, "trainable_blocks": v.trainable_blocks,
                         "depth": v.depth, "pool_heads": v.pool_heads, "pool_queries": v.pool_queries},
              "init_logit_scale": round(math.exp(mcfg.init_logit_scale), 3), "adapter_blocks": mcfg.adapter.blocks,
              "text_geometry": tcfg.text_geometry, "seed": tcfg.seed, "caption_keys": list(tcfg.caption_keys),
              "backbone_lr": tcfg.backbone_lr,
              "epochs": epochs, "presence": presence, "train_scenes": len(train), f"{args.split}_scenes": len(test), "dim": DIM,
              "train": {k: summary.get(k) for k in ("steps", "seconds", "samples_s") if k in summary},
              **evaluate_oracle(args.out / "ckpt", test, presence)}
    (args.out / "oracle.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    nt = result["near_twin"]
    sys.stdout.write(f"long t2i R@1 {result['long']['t2i_r1']:.3f} i2t R@1 {result['long']['i2t_r1']:.3f}; "
                     f"near twins t2i {nt['long']['t2i']:.3f} i2t {nt['long']['i2t']:.3f}\n")
    for attr, r in nt["long_by"]["attribute"].items():
        sys.stdout.write(f"  {attr}: t2i {r['t2i']:.2f} i2t {r['i2t']:.2f} ({r['n_pairs']} pairs)\n")


if __name__ == "__main__":
    main()
