"""The reproduction's rows and presets. No torch here: `llm2clip --help` reads ``ROWS`` through the CLI."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm2clip.config import VisionCfg
    from training.config import TrainCfg

# stage 1's recipes, each a control row "llm_cc:<name>" (the steps are the preset's stage1_steps); llm_cc itself
# is the one of them, at the step count, that scores best on the val split (research/selection.py)
STAGE1_VARIANTS: dict[str, dict[str, Any]] = {
    # long positives and generator near twins as hard negatives, half of each micro-batch (FINDINGS.md): the
    # preset before issue 14, which was chosen on the test split
    "hardneg": {"positives": "long", "hard_negatives": True, "mntp": False},
    # the long caption and its paraphrases as positives only: no hard negatives
    "longpos": {"positives": "long", "hard_negatives": False, "mntp": False},
    # the paper's pairs: long with short (and paraphrases), no hard negatives
    "paper": {"positives": "all", "hard_negatives": False, "mntp": False},
    # hardneg after stage1_mntp_steps of masked next-token prediction (LLM2Vec's first step)
    "mntp": {"positives": "long", "hard_negatives": True, "mntp": True},
    # hardneg with 2 more views of each scene and twin in other words (WordNet synonyms: the paper's diverse
    # captions, issue 14 item 4); a candidate since a val probe (docs/results/unseen-phrasing.md)
    "hardneg_words": {"positives": "long", "hard_negatives": True, "mntp": False, "other_words": 2},
    # hardneg_words with 2 more views of each scene and twin in the alt grammar (other sentence orders and
    # constructions: the paper's diverse captions beyond synonyms, issue 14 item 4)
    "hardneg_alt": {"positives": "long", "hard_negatives": True, "mntp": False, "other_words": 2, "alt_views": 2},
}
CC_ROWS = tuple(f"llm_cc:{name}" for name in STAGE1_VARIANTS)
# the paper's table, what `llm2clip repro` runs by default; minilm77: all-MiniLM-L6-v2 cut at 77 tokens, the
# stand-in for CLIP's pretrained but short text encoder
MAIN_ROWS = ("clip77", "minilm77", "minilm", "llm_nocc", "llm_cc")
ROWS = (*MAIN_ROWS, *CC_ROWS)
# where the preset's llm_cc recipe and steps come from, for the report of a run that does not choose them itself
# (`llm2clip repro --select` chooses them on the val split)
LLM_CC_SOURCE = ("the preset before issue 14, which was chosen by scoring recipes on the test split "
                 "(docs/results/repro/pre-protocol/FINDINGS.md): not a val choice yet; `--select` chooses on the val split")


@dataclass
class ReproCfg:
    train_scenes: int = 4000
    val_scenes: int = 300  # near-twin pairs every choice is made on (and stage 1's held-out set)
    test_scenes: int = 500
    # the vision tower every row trains in stage 2 (llm2clip.config.VisionCfg): the backbone, the number of its
    # last blocks that train (None: all, 0: locked, LiT-style) and, for dinov2-s14, the block it is read at.
    # A locked prefix's tokens are computed once per image and shared by every row and seed (DIR/token_cache).
    # DINOv2 ViT-S/14 at 224 px, locked and read at block 8, was chosen on the val split over EfficientNet-Lite0
    # at 160 px, all of it trained (the preset before): docs/results/vision-side.md
    image_size: int = 224
    vision_arch: str = "dinov2-s14"
    trainable_blocks: int | None = 0
    vision_depth: int | None = 8
    embed_dim: int = 256
    # 20 with the locked tower: at 10 it was behind EfficientNet-Lite0's 10 on the val split, at 20 it is not
    # (docs/results/vision-side.md), and its stage 2 still takes a fifth of the time
    epochs: int = 20
    batch_size: int = 64
    lr: float = 5e-4
    # ~4.3 s per step of 8 items x 2 views (hardneg: 4 scenes + their twins) on 2 cores with LoRA on every layer,
    # ~2.4 s on the top 15: ~16 min (bench/RESULTS.md, 11 and 12)
    stage1_steps: int = 400
    # the step counts llm_cc's chosen recipe is also trained for, each scored on val against stage1_steps
    stage1_step_probes: tuple[int, ...] = (200,)
    # LoRA on the top n of SmolLM2's 30 layers in stage 1 (0: every layer): 1.76x a step (a shorter backward),
    # chosen on the val split over every layer with llm_cc:hardneg at 400 steps (bench/RESULTS.md, 12)
    stage1_lora_layers: int = 15
    # llm_cc's stage-1 recipe (a name of STAGE1_VARIANTS) and steps in a run without --select (LLM_CC_SOURCE)
    llm_cc_recipe: str = "hardneg"
    llm_cc_steps: int = 400
    stage1_mntp_steps: int = 100  # of the llm_cc:mntp row only (LLM2Vec runs 1000 before its contrastive step)
    stage1_batch: int = 8
    stage1_paraphrases: int = 2
    clip77_width: int = 256
    clip77_layers: int = 4
    throughput_steps: int = 5
    seed: int = 0  # of the data; seed k of a row trains with seed + k (stage 1 and stage 2)
    seeds: int = 1  # training seeds per row: tables show mean +- sd over them


QUICK = ReproCfg(train_scenes=24, val_scenes=8, test_scenes=12, image_size=56, embed_dim=64, epochs=1,
                 batch_size=8, stage1_steps=2, stage1_step_probes=(1,), llm_cc_steps=2, stage1_mntp_steps=1,
                 stage1_batch=2, stage1_paraphrases=1, clip77_width=64, clip77_layers=2, throughput_steps=1)


def preset(quick: bool, **overrides: Any) -> ReproCfg:
    """The full or the quick preset, with the overrides that are not None."""
    base = QUICK if quick else ReproCfg()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def vision_cfg(cfg: ReproCfg) -> VisionCfg:
    """The vision tower of every row (its pool's defaults are ``VisionCfg``'s)."""
    from llm2clip.config import VisionCfg

    return VisionCfg(arch=cfg.vision_arch, image_size=cfg.image_size, trainable_blocks=cfg.trainable_blocks,
                     depth=cfg.vision_depth)


def stage2_cfg(cfg: ReproCfg, train_items: int, epochs: int | None = None) -> TrainCfg:
    """The stage-2 ``TrainCfg`` every row trains with: the ``repro`` preset (warmup over 1/20 of the steps, 100
    history points) with this run's epochs, batch size, learning rate and seed."""
    from training.recipes import stage2_preset

    return stage2_preset("repro", train_items=train_items, epochs=epochs or cfg.epochs, batch_size=cfg.batch_size,
                         lr=cfg.lr, seed=cfg.seed)
