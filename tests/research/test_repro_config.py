"""The reproduction's presets and the stage-2 recipe every row trains with."""

from __future__ import annotations

from research.repro_config import QUICK, ReproCfg, preset, stage2_cfg


def test_preset_applies_only_the_given_overrides():
    assert preset(False) == ReproCfg() and preset(True) == QUICK
    cfg = preset(True, epochs=3, seed=None, stage1_positives="all")
    assert cfg.epochs == 3 and cfg.stage1_positives == "all"
    assert cfg.seed == QUICK.seed and cfg.train_scenes == QUICK.train_scenes == 24
    assert QUICK.epochs == 1  # the preset object itself is not changed


def test_stage2_recipe_warms_up_over_a_twentieth_and_logs_a_hundred_points():
    cfg = ReproCfg()  # 4000 scenes, batch 64, 10 epochs: 62 steps an epoch
    t = stage2_cfg(cfg, 4000)
    assert (t.epochs, t.batch_size, t.lr, t.seed) == (10, 64, 5e-4, 0)
    assert t.warmup_steps == 620 // 20 and t.log_every == 620 // 100
    short = stage2_cfg(cfg, 4000, epochs=2)
    assert short.epochs == 2 and short.warmup_steps == 124 // 20 and short.log_every == 1
    # fewer scenes than one batch: still one step an epoch, and never a zero warmup or logging interval
    tiny = stage2_cfg(QUICK, 5)
    assert (tiny.epochs, tiny.batch_size, tiny.warmup_steps, tiny.log_every) == (1, 8, 1, 1)
