"""The reproduction's presets and the stage-2 recipe every row trains with."""

from __future__ import annotations

from research.repro_config import CC_ROWS, QUICK, ROWS, STAGE1_VARIANTS, ReproCfg, preset, stage2_cfg


def test_preset_applies_only_the_given_overrides():
    assert preset(False) == ReproCfg() and preset(True) == QUICK
    cfg = preset(True, epochs=3, seed=None, seeds=2)
    assert cfg.epochs == 3 and cfg.seeds == 2
    assert cfg.seed == QUICK.seed and cfg.train_scenes == QUICK.train_scenes == 24
    assert QUICK.epochs == 1  # the preset object itself is not changed


def test_stage2_recipe_warms_up_over_a_twentieth_and_logs_a_hundred_points():
    cfg = ReproCfg()  # 4000 scenes, batch 64, 20 epochs: 62 steps an epoch
    t = stage2_cfg(cfg, 4000)
    assert (t.epochs, t.batch_size, t.lr, t.seed) == (20, 64, 5e-4, 0)
    assert t.warmup_steps == 1240 // 20 and t.log_every == 1240 // 100
    short = stage2_cfg(cfg, 4000, epochs=2)
    assert short.epochs == 2 and short.warmup_steps == 124 // 20 and short.log_every == 1
    # fewer scenes than one batch: still one step an epoch, and never a zero warmup or logging interval
    tiny = stage2_cfg(QUICK, 5)
    assert (tiny.epochs, tiny.batch_size, tiny.warmup_steps, tiny.log_every) == (1, 8, 1, 1)


def test_each_stage1_control_is_a_row_and_llm_cc_is_chosen_among_them():
    assert ROWS[:5] == ("clip77", "minilm77", "minilm", "llm_nocc", "llm_cc")
    assert ROWS[5:] == CC_ROWS == tuple(f"llm_cc:{v}" for v in STAGE1_VARIANTS)
    assert STAGE1_VARIANTS["paper"] == {"positives": "all", "hard_negatives": False, "mntp": False}
    assert STAGE1_VARIANTS["longpos"] == {"positives": "long", "hard_negatives": False, "mntp": False}
    # mntp is hardneg with MNTP first: one setting apart, as each control is from the recipe it tests
    assert {**STAGE1_VARIANTS["mntp"], "mntp": False} == STAGE1_VARIANTS["hardneg"]
    assert ReproCfg().stage1_mntp_steps > 0 and QUICK.stage1_mntp_steps > 0
    assert all(0 < s < ReproCfg().stage1_steps for s in ReproCfg().stage1_step_probes)
    assert ReproCfg().seeds == 1


def test_every_row_trains_the_presets_vision_tower():
    from research.repro_config import vision_cfg

    for cfg in (ReproCfg(), QUICK):
        v = vision_cfg(cfg)
        assert (v.arch, v.image_size, v.trainable_blocks, v.depth) == (
            cfg.vision_arch, cfg.image_size, cfg.trainable_blocks, cfg.vision_depth)
        if v.arch == "dinov2-s14":
            assert v.image_size % 14 == 0  # whole patches


def test_lora_on_the_top_layers_reaches_stage1_and_gets_folders_of_its_own():
    from dataclasses import replace

    from research.repro_rows import Candidate, row_spec, stage1_cfg

    assert ReproCfg().stage1_lora_layers == 15  # the preset, chosen on val
    every = row_spec("llm_cc:hardneg", replace(ReproCfg(), stage1_lora_layers=0))
    top = row_spec("llm_cc:hardneg", ReproCfg())
    assert every.stage1 == Candidate("hardneg", 400) and top.stage1 == Candidate("hardneg", 400, 15)
    assert stage1_cfg(ReproCfg(), every.stage1, 0).lora_layers == 0  # the candidate's, not the preset's
    assert stage1_cfg(ReproCfg(), top.stage1, 0).lora_layers == 15
    # a run's caches are found by folder: the two never read each other's stage 1, embeddings or stage 2
    assert (every.key, every.stage1.folder) == ("llm_cc-hardneg-400", "hardneg-400")
    assert (top.key, top.stage1.folder) == ("llm_cc-hardneg-400-top15", "hardneg-400-top15")
    assert top.stage1.label == "llm_cc:hardneg (400 steps, LoRA on the top 15 layers)"


def test_a_recipes_views_in_other_words_reach_stage1(monkeypatch):
    from research import repro_config as rc
    from research.repro_rows import Candidate, stage1_cfg

    words = {v: stage1_cfg(ReproCfg(), Candidate(v, 400, 15), 0).other_words for v in STAGE1_VARIANTS}
    assert words == {"hardneg": 0, "longpos": 0, "paper": 0, "mntp": 0, "hardneg_words": 2, "hardneg_alt": 2}
    alt = {v: stage1_cfg(ReproCfg(), Candidate(v, 400, 15), 0).alt_views for v in STAGE1_VARIANTS}
    assert alt == {**dict.fromkeys(STAGE1_VARIANTS, 0), "hardneg_alt": 2}
    monkeypatch.setitem(rc.STAGE1_VARIANTS, "words", {**rc.STAGE1_VARIANTS["hardneg"], "other_words": 2})
    cfg = stage1_cfg(ReproCfg(), Candidate("words", 400, 15), 0)
    assert cfg.other_words == 2 and cfg.hard_negatives and cfg.positives == "long"
