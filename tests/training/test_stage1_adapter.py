"""`llm2clip train adapter`: a stage-1 run's LoRA as a small bf16 folder with a card, merged back into the base
on another machine (a fresh cache) to the run's own text encoder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import make_tiny_llm

from llm2clip.data import read_dataset
from llm2clip.errors import BundleError
from training.stage1.adapter import (
    CARD,
    WEIGHTS,
    check_adapter,
    export_adapter,
    merged_text_encoder,
    read_card,
)
from training.stage1.config import Stage1Cfg
from training.stage1.train import train_text

CFG = {"steps": 3, "mntp_steps": 0, "batch_size": 4, "lr": 5e-3, "warmup_steps": 1, "max_tokens": 64,
       "paraphrases": 1, "save_every": 3, "seed": 0, "positives": "long", "hard_negatives": True}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from llm2clip.data import generate_scenes

    out = tmp_path_factory.mktemp("adapter_scenes") / "train"
    generate_scenes(out, 12, "train", 0, progress=False)
    return read_dataset(out)


@pytest.fixture(scope="module")
def exported(scenes, tiny_llm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter")
    run = root / "run"
    train_text(scenes, run, tiny_llm_dir, Stage1Cfg(**CFG), val=scenes.root, progress=False)
    card = export_adapter(run, root / "adapter", "tiny-cc")
    return run, root / "adapter", card


def test_the_adapter_is_the_runs_lora_in_bf16_with_a_card(exported, scenes, tiny_llm_dir):
    run, adapter, card = exported
    fp32 = load_file(str(run / "checkpoint" / "contrastive" / WEIGHTS))
    bf16 = load_file(str(adapter / WEIGHTS))
    assert bf16.keys() == fp32.keys() and all(v.dtype == torch.bfloat16 for v in bf16.values())
    assert all(torch.equal(bf16[k], fp32[k].to(torch.bfloat16)) for k in fp32)
    assert card["params"] == sum(v.numel() for v in fp32.values())
    summary = json.loads((run / "stage1.json").read_text())
    assert card["base"]["fingerprint"] == summary["base"]["fingerprint"]
    assert card["recipe"]["hard_negatives"] is True and card["contrastive"]["steps"] == 3
    # nothing of the training machine's folders goes into the shipped files
    assert card["val"]["before"]["caption_retrieval"] == summary["val"]["before"]["caption_retrieval"]
    for name in (CARD, "adapter_config.json"):
        text = (adapter / name).read_text()
        assert str(tiny_llm_dir) not in text and str(run) not in text and str(scenes.root) not in text
    assert read_card(adapter) == card
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in [adapter, *adapter.iterdir()])  # anyone can read it


def test_merged_on_a_fresh_machine_it_is_the_runs_text_encoder(exported, scenes, tiny_llm_dir, tmp_path):
    run, adapter, _ = exported
    cache = tmp_path / "cache"
    folder = merged_text_encoder(adapter, base=tiny_llm_dir, cache=cache)
    got, want, base = (load_file(str(p / "model.safetensors")) for p in (folder, run, tiny_llm_dir))
    assert got.keys() == want.keys()
    moved = [k for k in got if not torch.equal(want[k], base[k])]
    assert moved  # the run changed the projections ...
    for k in got:  # ... and the merged adapter makes the same change, up to the bf16 rounding of its factors
        update = (want[k] - base[k]).abs().max()
        assert (got[k] - want[k]).abs().max() <= 0.02 * update + 1e-7, k
    assert (folder / "tokenizer.json").is_file()
    # cached: the second call returns the same folder without merging again
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert merged_text_encoder(adapter, base=tiny_llm_dir, cache=cache) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    check = check_adapter(adapter, run, [item.captions["long"] for item in scenes], cache=cache, base=tiny_llm_dir)
    assert check["texts"] == len(scenes) and check["min_cosine"] > 0.999
    assert read_card(adapter)["check"] == check


def test_a_damaged_or_foreign_adapter_is_refused(exported, tmp_path, tiny_llm_dir):
    _, adapter, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    with pytest.raises(BundleError, match="was trained on"):
        merged_text_encoder(copy, base=make_tiny_llm(tmp_path / "other", seed=1), cache=tmp_path / "c1")
    data = bytearray((copy / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (copy / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="damaged"):
        merged_text_encoder(copy, base=tiny_llm_dir, cache=tmp_path / "c2")
    with pytest.raises(BundleError, match="not a stage-1 adapter"):
        read_card(tmp_path)


def test_an_unfinished_run_is_refused(tmp_path):
    with pytest.raises(BundleError, match="no finished stage-1 run"):
        export_adapter(tmp_path, tmp_path / "out", "x")


# ---------------------------------------------------------------- the adapter the demo ships


@pytest.mark.slow
def test_the_shipped_adapter_is_intact_and_fits_the_default_base():
    from llm2clip.defaults import shipped_adapter, smollm2_dir
    from training.embed import text_encoder_info

    card = read_card(shipped_adapter())  # checks the sha256 of the weights
    assert card["base"]["fingerprint"] == text_encoder_info(smollm2_dir())["fingerprint"]
    assert card["recipe"]["mntp_steps"] == 0 and card["check"]["min_cosine"] > 0.99
    assert (shipped_adapter() / WEIGHTS).stat().st_size < 12 * 2**20  # small enough to ship in the package



def test_the_base_fingerprint_ignores_the_transformers_version_that_wrote_it(tiny_llm_dir, tmp_path):
    """A transformers release rewrites config.json's ``transformers_version`` when the default SmolLM2 is converted
    on a new machine; the weights and the model are the same, so an adapter trained on it must still fit."""
    import json
    import shutil

    from training.embed import text_encoder_info

    copy = tmp_path / "llm"
    shutil.copytree(tiny_llm_dir, copy)
    before = text_encoder_info(copy)["fingerprint"]
    config = json.loads((copy / "config.json").read_text())
    config["transformers_version"] = "0.0.1"
    (copy / "config.json").write_text(json.dumps(config, indent=4))
    assert text_encoder_info(copy)["fingerprint"] == before
    config["num_hidden_layers"] = config["num_hidden_layers"] + 1  # another model: another fingerprint
    (copy / "config.json").write_text(json.dumps(config))
    assert text_encoder_info(copy)["fingerprint"] != before
