"""The reproduction's rows and presets. No torch here: `llm2clip --help` reads ``ROWS`` through the CLI."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import TrainCfg

ROWS = ("clip77", "minilm", "llm_nocc", "llm_cc")


@dataclass
class ReproCfg:
    train_scenes: int = 4000
    val_scenes: int = 300  # stage-1 held-out set
    test_scenes: int = 500
    image_size: int = 160
    embed_dim: int = 256
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    # ~6 s per step of 8 scenes (+ their twins) x 2 views on 2 cores: stage 1 takes ~46 min, once
    stage1_steps: int = 400
    stage1_mntp_steps: int = 0
    stage1_batch: int = 8
    stage1_paraphrases: int = 2
    # the corpus's short captions name only count, classes and background: as positives of the long caption
    # ("all", the paper's pairs) they pull its embedding toward those facts and llm_cc loses to llm_nocc;
    # "long" pairs a long caption with its paraphrases only (docs/results/repro/FINDINGS.md)
    stage1_positives: str = "long"
    # half of each stage-1 micro-batch: near twins of the other half; what teaches the text side which
    # object carries a size or an orientation (FINDINGS.md)
    stage1_hard_negatives: bool = True
    clip77_width: int = 256
    clip77_layers: int = 4
    throughput_steps: int = 5
    seed: int = 0


QUICK = ReproCfg(train_scenes=24, val_scenes=8, test_scenes=12, image_size=64, embed_dim=64, epochs=1,
                 batch_size=8, stage1_steps=2, stage1_mntp_steps=1, stage1_batch=4, stage1_paraphrases=1,
                 clip77_width=64, clip77_layers=2, throughput_steps=1)


def preset(quick: bool, **overrides: Any) -> ReproCfg:
    """The full or the quick preset, with the overrides that are not None."""
    base = QUICK if quick else ReproCfg()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def stage2_cfg(cfg: ReproCfg, train_items: int, epochs: int | None = None) -> TrainCfg:
    """The stage-2 ``TrainCfg`` every row trains with: the ``repro`` preset (warmup over 1/20 of the steps, 100
    history points) with this run's epochs, batch size, learning rate and seed."""
    from training.recipes import stage2_preset

    return stage2_preset("repro", train_items=train_items, epochs=epochs or cfg.epochs, batch_size=cfg.batch_size,
                         lr=cfg.lr, seed=cfg.seed)
