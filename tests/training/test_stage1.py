"""Stage 1 (`llm2clip train text`) on generated scenes: the caption pools (paraphrases, near twins), and tiny-model
runs that resume exactly, merge their LoRA and feed stage 2."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from llm2clip.data import read_dataset
from llm2clip.errors import BundleError
from llm2clip.text import LLMEncoder, Tokenizer
from training.stage1.config import LORA_TARGETS, Stage1Cfg
from training.stage1.lora import lora_target_names
from training.stage1.train import train_text
from training.stage1.views import caption_pools, twin_pools

# ---------------------------------------------------------------- paraphrases


def has(text: str, phrase: str) -> bool:
    """``phrase`` as whole words; "shirt" does not match inside "t-shirt", "upside down" matches "upside-down"."""
    pattern = re.escape(phrase).replace(r"\ ", "[ -]")
    return re.search(rf"(?<!\w)(?<!\bt-){pattern}(?!\w)", text, flags=re.IGNORECASE) is not None


def describes(sentence: str, obj: dict) -> bool:
    noun = {"trouser": "trousers"}.get(obj["class"], obj["class"])
    words = (obj["colour"], noun, obj["size"], obj["orientation"], obj["row"], obj["col"])
    return all(has(sentence, w) for w in words)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from llm2clip.data import generate_scenes

    out = tmp_path_factory.mktemp("s1") / "train"
    generate_scenes(out, 16, "train", 0, progress=False)
    return read_dataset(out)


def test_paraphrase_restates_every_object(scenes):
    from llm2clip.data import paraphrase_long

    for item in scenes.items[:8]:
        text = paraphrase_long(item.meta, 11, avoid=[item.long])
        assert text != item.long
        assert text == paraphrase_long(item.meta, 11, avoid=[item.long])
        assert paraphrase_long(item.meta, 12) != text
        parts = re.split(r"(?<=[.!?])\s+", text)
        for obj in item.meta["objects"]:
            assert any(describes(s, obj) for s in parts), (obj, text)
        bg = item.meta["background"]
        assert bg["colour"] in text and bg["texture"] in text


def test_long_positives_leave_the_short_caption_out(scenes):
    every = caption_pools(scenes, 2, 0, progress=False)
    long_only = caption_pools(scenes, 2, 0, progress=False, positives="long")
    for item, a, b in zip(scenes.items, every, long_only, strict=True):
        assert item.short in a and item.short not in b
        assert b[0] == item.long and len(b) == 3 and b[1:] == a[-2:]  # the same paraphrases


def _objects(text: str, item_meta: dict) -> list[bool]:
    parts = re.split(r"(?<=[.!?])\s+", text)
    return [any(describes(s, o) for s in parts) for o in item_meta["objects"]]


def test_twin_captions_change_one_fact_of_one_object(scenes):
    from llm2clip.data import near_twin_graph

    pools = twin_pools(scenes, 0, progress=False)
    assert pools == twin_pools(scenes, 0, progress=False)
    for i, (item, pool) in enumerate(zip(scenes.items, pools, strict=True)):
        assert len(pool) == 2 and pool[0] != pool[1] and item.long not in pool
        state = np.random.SeedSequence([0, i, 2**20]).generate_state(3)
        twin = near_twin_graph(item.meta, int(state[0]))
        assert twin["background"] == item.meta["background"]
        changed = [k for k, (a, b) in enumerate(zip(item.meta["objects"], twin["objects"], strict=True)) if a != b]
        assert len(changed) == 1
        a, b = item.meta["objects"][changed[0]], twin["objects"][changed[0]]
        diff = {k for k in a if a[k] != b[k]}
        assert diff in ({"colour"}, {"class"}, {"size"}, {"orientation"}, {"row"}, {"col"}, {"row", "col"})
        for text in pool:  # every caption of the twin restates the twin, not the scene
            assert all(_objects(text, twin))
            assert not all(_objects(text, item.meta))


# ---------------------------------------------------------------- tiny stage-1 runs

CFG = {"mntp_steps": 2, "batch_size": 4, "grad_accum": 2, "lr": 1e-3, "mntp_lr": 1e-3, "warmup_steps": 1,
       "max_tokens": 64, "paraphrases": 1, "save_every": 2, "seed": 0}


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _history(folder) -> dict[str, list[dict]]:
    """history.json without the step rate, the one value that depends on the machine's speed."""
    hist = json.loads((folder / "history.json").read_text())
    return {phase: [{k: v for k, v in h.items() if k != "samples_s"} for h in steps] for phase, steps in hist.items()}


@pytest.fixture(scope="module")
def run(scenes, tiny_llm_dir, tmp_path_factory):
    """3 contrastive steps after 2 MNTP steps, then the same run extended to 6."""
    out = tmp_path_factory.mktemp("stage1") / "text"
    first = train_text(scenes, out, tiny_llm_dir, Stage1Cfg(steps=3, **CFG), val=scenes.root, progress=False)
    first = {"summary": first, "history": _history(out), "weights": _weights(out)}
    second = train_text(scenes, out, tiny_llm_dir, Stage1Cfg(steps=6, **CFG), val=scenes.root, progress=False)
    return out, first, second


def test_extending_a_run_continues_from_its_checkpoint(run):
    out, first, second = run
    assert first["summary"]["steps_run"] == {"mntp": 2, "contrastive": 3}
    assert second["resumed_from"] == {"mntp": 2, "contrastive": 3}
    assert second["steps_run"] == {"mntp": 0, "contrastive": 3}
    hist = _history(out)
    assert [h["step"] for h in hist["contrastive"]] == [1, 2, 3, 4, 5, 6]
    assert hist["mntp"] == first["history"]["mntp"] and [h["step"] for h in hist["mntp"]] == [1, 2]
    # the first three steps are the first run's own (its lr followed a 3-step schedule: no restart)
    assert hist["contrastive"][:3] == first["history"]["contrastive"]
    assert hist["contrastive"][2]["lr"] != hist["contrastive"][3]["lr"]


def test_mntp_starts_at_the_chance_cross_entropy(run, tiny_llm_dir):
    # the tiny base has no LM head: a fresh one scores every vocabulary entry about alike
    vocab = json.loads((tiny_llm_dir / "config.json").read_text())["vocab_size"]
    assert run[1]["history"]["mntp"][0]["loss"] == pytest.approx(math.log(vocab), abs=0.1)


def test_rerun_done_is_a_no_op_and_other_recipe_is_refused(run, scenes, tiny_llm_dir, monkeypatch):
    from training.stage1 import train as stage1_train

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run loads no model")

    monkeypatch.setattr(stage1_train, "load_causal", no_model)
    monkeypatch.setattr(stage1_train, "load_encoder_base", no_model)
    out, _, second = run
    assert train_text(scenes, out, tiny_llm_dir, Stage1Cfg(steps=6, **CFG), progress=False) == second
    with pytest.raises(BundleError, match="lora_r"):
        train_text(scenes, out, tiny_llm_dir, Stage1Cfg(steps=6, **{**CFG, "lora_r": 8}), progress=False)


def test_output_is_a_merged_hf_folder(run, tiny_llm_dir):
    out, _, second = run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaModel"]
    assert (out / "tokenizer.json").read_bytes() == (tiny_llm_dir / "tokenizer.json").read_bytes()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    with safe_open(str(tiny_llm_dir / "model.safetensors"), "pt") as f:
        base_keys = set(f.keys())
    assert keys == base_keys  # no lora_A / lora_B / base_model.model. prefixes left
    assert not any("lora" in k or "base_layer" in k for k in keys)

    texts = ["two items: a bag and a coat", "A small red sneaker sits in the top left cell, upright."]
    tok = Tokenizer(out, 64)
    ids, mask, _ = tok(texts)
    with torch.no_grad():
        new = LLMEncoder.from_pretrained(out)(torch.from_numpy(ids), torch.from_numpy(mask))
        old = LLMEncoder.from_pretrained(tiny_llm_dir)(torch.from_numpy(ids), torch.from_numpy(mask))
    assert new.shape == old.shape == (2, 64)
    assert (new - old).abs().max() > 1e-3  # the merged LoRA changed the encoder

    summary = json.loads((out / "stage1.json").read_text())
    assert summary == second and summary["format"] == "llm2clip-stage1"
    assert summary["recipe"]["steps"] == 6 and summary["contrastive"]["steps"] == 6
    assert summary["mask_token_id"] == Tokenizer(tiny_llm_dir, 8).token_id("_") is not None
    assert summary["train"]["views_per_item"] == pytest.approx(3.0)  # long, short, one paraphrase


def test_validation_is_caption_retrieval_before_and_after(run, scenes, tiny_llm_dir):
    from training.caption_retrieval import caption_retrieval

    out, _, second = run

    def measured(folder):
        result = caption_retrieval(folder, scenes, max_tokens=64, progress=False)
        return {k: v for k, v in result.items() if k != "seconds"}

    val = {when: {k: v for k, v in second["val"][when].items() if k != "seconds"} for when in ("before", "after")}
    assert val["before"] == measured(tiny_llm_dir) and val["after"] == measured(out)
    assert val["before"]["text_encoder"]["fingerprint"] != val["after"]["text_encoder"]["fingerprint"]


def test_output_feeds_stage_2(run, scenes, tmp_path):
    from training.config import EmbedCfg
    from training.embed import embed_captions

    out = run[0]
    manifest = embed_captions(scenes, out, tmp_path / "emb", EmbedCfg(max_tokens=64), progress=False)
    assert manifest["count"] == 2 * len(scenes) and manifest["dim"] == 64
    assert manifest["text_encoder"]["name"].endswith("-llm2clip-cc")


HARD = {**CFG, "mntp_steps": 0, "positives": "long", "hard_negatives": True}


@pytest.fixture(scope="module")
def hard_run(scenes, tiny_llm_dir, tmp_path_factory):
    """2 contrastive steps, no MNTP, long positives and near twins as hard negatives."""
    out = tmp_path_factory.mktemp("stage1_hard") / "text"
    return out, train_text(scenes, out, tiny_llm_dir, Stage1Cfg(steps=2, **HARD), progress=False)


def test_long_positives_with_hard_negatives(hard_run, scenes):
    out, summary = hard_run
    assert summary["recipe"]["positives"] == "long" and summary["recipe"]["hard_negatives"] is True
    assert summary["train"]["views_per_item"] == pytest.approx(2.0)  # long and one paraphrase, no short
    pools = json.loads((out / "checkpoint" / "captions.json").read_text())
    assert not any(item.short in p for item, p in zip(scenes.items, pools, strict=True))
    twins = json.loads((out / "checkpoint" / "twins.json").read_text())
    assert twins == twin_pools(scenes, 0, progress=False)
    assert summary["contrastive"]["steps"] == 2 and summary["mntp"] is None and summary["mask_token_id"] is None


def test_first_loss_is_the_base_encoders_on_the_first_micro_batches(hard_run, tiny_llm_dir):
    from transformers import AutoModel

    from training.stage1.batches import encode
    from training.stage1.losses import same_text, supcon_loss
    from training.stage1.views import ViewSampler

    out, _ = hard_run
    pools = json.loads((out / "checkpoint" / "captions.json").read_text())
    twins = json.loads((out / "checkpoint" / "twins.json").read_text())
    sampler = ViewSampler(pools, CFG["batch_size"], CFG["seed"], stream=0, twins=twins)
    run_cfg = Stage1Cfg()  # the run's attention kernel and length buckets
    enc = LLMEncoder(AutoModel.from_pretrained(str(tiny_llm_dir), dtype=torch.float32,
                                               attn_implementation=run_cfg.attention))
    tok = Tokenizer(tiny_llm_dir, CFG["max_tokens"])
    losses = []
    # a fresh LoRA adds exactly zero: step 1 sees the base encoder, micro-batches 0 and 1 (grad_accum 2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for m in range(2):
            texts, labels = sampler(m)
            emb = encode(enc, tok, texts, run_cfg.length_buckets)
            losses.append(float(supcon_loss(emb, labels, 0.05, same_text(texts))))
    assert _history(out)["contrastive"][0]["loss"] == pytest.approx(float(np.mean(losses)), abs=2e-5)


def test_output_is_the_base_with_the_checkpointed_lora_merged(hard_run, tiny_llm_dir):
    from peft import PeftModel
    from transformers import AutoModel

    out, _ = hard_run
    base = _weights(tiny_llm_dir)
    model = AutoModel.from_pretrained(str(tiny_llm_dir), dtype=torch.float32)
    want = PeftModel.from_pretrained(model, str(out / "checkpoint" / "contrastive")).merge_and_unload().state_dict()
    got = _weights(out)
    assert got.keys() == base.keys()
    assert all(torch.allclose(got[k], want[k], rtol=0, atol=1e-6) for k in got)
    changed = {k.split(".")[-2] for k in got if not torch.equal(got[k], base[k])}
    assert changed == set(LORA_TARGETS)  # the LoRA targets, and nothing else


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_uninterrupted_result(hard_run, scenes, tiny_llm_dir, tmp_path, monkeypatch):
    step, calls = torch.optim.AdamW.step, []

    def killed_in_step_2(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # step 1 done and checkpointed
            raise Killed
        return step(self, *args, **kwargs)

    out = tmp_path / "text"
    # how often a run saves is no part of its result
    cfg = Stage1Cfg(steps=2, **{**HARD, "save_every": 1})
    monkeypatch.setattr(torch.optim.AdamW, "step", killed_in_step_2)
    with pytest.raises(Killed):
        train_text(scenes, out, tiny_llm_dir, cfg, progress=False)
    monkeypatch.undo()
    resumed = train_text(scenes, out, tiny_llm_dir, cfg, progress=False)
    assert resumed["resumed_from"] == {"mntp": 0, "contrastive": 1}
    assert resumed["steps_run"] == {"mntp": 0, "contrastive": 1}
    assert _history(out) == _history(hard_run[0])
    weights, uninterrupted = _weights(out), _weights(hard_run[0])
    assert weights.keys() == uninterrupted.keys()
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights)


def test_lora_targets_are_the_projections(tiny_llm_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llm_dir))
    assert lora_target_names(model) == sorted(LORA_TARGETS)
    # another architecture's names: every Linear but the LM head
    assert lora_target_names(model, ("query_key_value",)) == sorted(LORA_TARGETS)


def test_cli_help(capsys):
    from llm2clip_cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "text", "--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--mntp-steps", "--grad-accum", "--lora-r", "--paraphrases", "--no-grad-checkpointing", "--val",
                 "--positives", "--hard-negatives"):
        assert flag in help_text


@pytest.mark.slow
def test_the_default_base_trains_both_phases(scenes, tmp_path):
    """SmolLM2 ties its LM head to the embeddings: MNTP predicts with it, and the encoder keeps the embeddings."""
    from llm2clip.defaults import smollm2_dir

    base, out = smollm2_dir(), tmp_path / "text"
    cfg = Stage1Cfg(steps=2, mntp_steps=1, batch_size=2, warmup_steps=1, max_tokens=48, paraphrases=1, seed=3)
    summary = train_text(scenes, out, base, cfg, progress=False)
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    assert summary["mntp"]["first_loss"] < math.log(vocab) - 2  # a pretrained LM predicts far better than chance
    assert summary["mask_token_id"] == Tokenizer(base, 8).token_id("_") is not None
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaModel"]
    weights = _weights(out)
    assert "embed_tokens.weight" in weights and not any("lm_head" in k for k in weights)

    tok = Tokenizer(out, 48)
    ids, mask, _ = tok(["A small red sneaker sits in the top left cell, upright."])
    with torch.no_grad():
        new = LLMEncoder.from_pretrained(out)(torch.from_numpy(ids), torch.from_numpy(mask))
        old = LLMEncoder.from_pretrained(base)(torch.from_numpy(ids), torch.from_numpy(mask))
    assert new.shape == old.shape and (new - old).abs().max() > 1e-4
