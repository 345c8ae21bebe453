"""research.adapter_probe's refusals, before anything trains (its run is tested on the quick repro, test_repro.py)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from research import adapter_probe
from research.repro_config import QUICK, ReproCfg


def test_the_rows_preset_comes_from_the_report_and_a_missing_run_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="report.json is missing"):
        adapter_probe.main(["--repro", str(tmp_path), "--row", "minilm", "--out", str(tmp_path / "o")])
    (tmp_path / "report.json").write_text(json.dumps({"config": {**asdict(QUICK), "retired_field": 1}}))
    assert adapter_probe.config_of(tmp_path).epochs == QUICK.epochs != ReproCfg().epochs
    with pytest.raises(SystemExit, match="holds no caption embeddings"):
        adapter_probe.main(["--repro", str(tmp_path), "--row", "llm_cc:hardneg", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_rows_map_to_the_repros_folders():
    cfg = ReproCfg()
    assert adapter_probe.spec_of("llm_cc:hardneg_words", cfg).key == "llm_cc-hardneg_words-400-top15"
    assert adapter_probe.spec_of("minilm77", cfg).max_tokens == 77
    with pytest.raises(SystemExit, match="no adapter"):
        adapter_probe.spec_of("clip77", cfg)
    with pytest.raises(SystemExit, match="unknown row 'llm_cc:nope'"):
        adapter_probe.spec_of("llm_cc:nope", cfg)


def test_captions_in_other_words_join_the_rows_embeddings(tmp_path, tiny_llm_dir):
    """``--other-words``: the train scenes get the captions `llm2clip data scenes --other-words` gives them, embedded
    by the row's own text encoder next to the row's embeddings, which stay as they were."""
    import torch

    from llm2clip.data import generate_scenes, read_dataset
    from llm2clip.data.generator import SceneCaptions
    from training.config import EmbedCfg
    from training.embed import CaptionEmbeddings, embed_captions

    cfg = ReproCfg(seed=3)
    generate_scenes(tmp_path / "repro" / "data" / "train", 6, "train", 3, progress=False)  # SPLIT_SEEDS["train"] 0
    row = tmp_path / "repro" / "embeddings" / "row"
    embed_captions(read_dataset(tmp_path / "repro" / "data" / "train"), tiny_llm_dir, row, progress=False)
    train, both = adapter_probe.with_extra_captions(tmp_path / "repro", row, tmp_path / "out", 1, cfg, alt=1)
    fresh = generate_scenes(tmp_path / "w", 6, "train", 3, progress=False,
                            captions=SceneCaptions(other_words=1, alt=1))
    assert [i.captions for i in train.items] == [i.captions for i in fresh.items]
    assert sum(i.captions["long_w1"] != i.captions["long"] for i in train.items) >= 3
    merged, own = CaptionEmbeddings(both), CaptionEmbeddings(row)
    for item in train.items:
        assert merged.keys_for(item.id) == ["long", "short", "long_w1", "long_a1"]
        assert torch.equal(merged.get(item.id, "long"), own.get(item.id, "long"))
    only_w = tmp_path / "only-w"
    embed_captions(train, tiny_llm_dir, only_w, EmbedCfg(captions=("long_w1",)), progress=False)
    # the same caption, embedded in a batch of other lengths: equal up to bf16 rounding (AMX kernels round by shape)
    alone = CaptionEmbeddings(only_w)
    cos = torch.nn.functional.cosine_similarity
    for item in (i for i in train.items if i.captions["long_w1"] != i.captions["long"]):
        joined = merged.get(item.id, "long_w1").float()
        assert cos(joined, alone.get(item.id, "long_w1").float(), dim=0) > 0.9999
        assert cos(joined, own.get(item.id, "long").float(), dim=0) < 0.995  # not the own-style caption's


def test_other_words_need_the_rows_own_text_encoder(tmp_path, tiny_llm_dir):
    import shutil

    from llm2clip.data import generate_scenes, read_dataset
    from training.embed import embed_captions

    generate_scenes(tmp_path / "repro" / "data" / "train", 4, "train", 0, progress=False)
    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_llm_dir, encoder)
    row = tmp_path / "row"
    embed_captions(read_dataset(tmp_path / "repro" / "data" / "train"), encoder, row, progress=False)
    (encoder / "config.json").write_text((encoder / "config.json").read_text().replace("}", ', "changed": 1}', 1))
    with pytest.raises(SystemExit, match="is gone or changed"):
        adapter_probe.with_extra_captions(tmp_path / "repro", row, tmp_path / "out", 1, ReproCfg())
