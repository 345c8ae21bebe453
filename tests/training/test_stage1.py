"""Stage 1 (`llm2clip train text`): MNTP masking, the contrastive loss, paraphrases, and a tiny-model run that
resumes, merges its LoRA and feeds stage 2."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from llm2clip.data import read_dataset
from llm2clip.errors import BundleError, DatasetError
from llm2clip.text import LLMEncoder, Tokenizer
from training.stage1 import (
    IGNORE,
    LORA_TARGETS,
    Stage1Cfg,
    ViewSampler,
    _check_recipe,
    caption_pools,
    lora_target_names,
    mntp_mask,
    mntp_targets,
    supcon_loss,
    train_text,
    twin_pools,
)

# ---------------------------------------------------------------- MNTP


def test_mntp_masks_real_tokens_and_predicts_from_the_previous_position():
    ids = torch.tensor([[100 * b + p for p in range(6)] for b in range(2)])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    gen = torch.Generator().manual_seed(0)
    inputs, labels = mntp_mask(ids, mask, mask_id=7, vocab_size=50, generator=gen, probability=1.0,
                               mask_frac=1.0, random_frac=0.0)
    # every real token but the first is selected; padding and position 0 never are
    want = torch.where(mask.bool(), ids, torch.full_like(ids, IGNORE))
    want[:, 0] = IGNORE
    assert torch.equal(labels, want)
    assert torch.equal(inputs[labels != IGNORE], torch.full(((labels != IGNORE).sum(),), 7))
    assert torch.equal(inputs[labels == IGNORE], ids[labels == IGNORE])

    hidden = ids.float().unsqueeze(-1)  # the state at (b, p) carries the token id at (b, p)
    h, y = mntp_targets(hidden, labels)
    assert len(y) == 5 + 3
    # token p is predicted from the state at p - 1
    assert torch.equal(y - h[:, 0].long(), torch.ones_like(y))


def test_mntp_rate_and_80_10_10_split():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(100, 200, (64, 50), generator=gen)
    mask = torch.ones_like(ids)
    mask[:, 30:] = 0
    mask[0, 2:] = 0  # a two-token text still gets its one candidate masked
    inputs, labels = mntp_mask(ids, mask, mask_id=5, vocab_size=100, generator=gen, probability=0.2)
    sel = labels != IGNORE
    assert not sel[:, 0].any() and not sel[mask == 0].any()
    assert sel[0, 1] and sel.any(dim=1).all()
    assert 0.17 < sel.sum() / (mask[:, 1:].sum()) < 0.23
    masked = (inputs == 5) & sel
    unchanged = (inputs == ids) & sel
    assert 0.75 < masked.sum() / sel.sum() < 0.85
    assert 0.06 < unchanged.sum() / sel.sum() < 0.14  # 10% kept (+ random draws that hit the same id)


# ---------------------------------------------------------------- contrastive loss


def test_supcon_prefers_matching_views_and_equals_symmetric_infonce():
    torch.manual_seed(0)
    scenes = F.normalize(torch.randn(4, 16), dim=-1)
    labels = torch.arange(4).repeat_interleave(2)
    views = scenes.repeat_interleave(2, dim=0)  # both views of a scene embed alike
    shuffled = views[torch.randperm(8)]
    assert supcon_loss(views, labels, 0.05) < supcon_loss(shuffled, labels, 0.05) - 1.0

    noisy = views + 0.3 * torch.randn(8, 16)
    z = F.normalize(noisy, dim=-1)
    logits = (z @ z.t() / 0.1).masked_fill(torch.eye(8, dtype=torch.bool), float("-inf"))
    partner = torch.arange(8) ^ 1  # view 2k's positive is 2k + 1 and back
    assert supcon_loss(noisy, labels, 0.1).item() == pytest.approx(F.cross_entropy(logits, partner).item(), rel=1e-5)


def test_supcon_ignores_identical_texts_of_other_scenes():
    torch.manual_seed(0)
    emb = torch.randn(6, 8)
    emb = torch.cat([emb, emb[1:2]])  # view 6: another scene's caption with the very text of view 1
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    ignore = torch.zeros(7, 7, dtype=torch.bool)
    ignore[1, 6] = ignore[6, 1] = True
    z = F.normalize(emb, dim=-1)
    logits = (z @ z.t() / 0.1).masked_fill(torch.eye(7, dtype=torch.bool) | ignore, float("-inf"))
    # view 6 has no positive, so it is no anchor; it stays a negative of every view but view 1
    want = F.cross_entropy(logits[:6], torch.arange(6) ^ 1)
    assert supcon_loss(emb, labels, 0.1, ignore).item() == pytest.approx(want.item(), rel=1e-5)
    assert supcon_loss(emb, labels, 0.1).item() > want.item()


def test_view_sampler_is_a_function_of_the_step():
    pools = [[f"a{i}", f"b{i}", f"c{i}"] for i in range(10)] + [["alone"]]
    s = ViewSampler(pools, batch_size=4, seed=3, stream=0)
    assert s.per_epoch == 2  # the single-caption item has no positive and is left out
    texts, labels = s(5)
    assert texts == s(5)[0] and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):
        a, b = texts[2 * k], texts[2 * k + 1]
        assert a != b and a[1:] == b[1:]  # two distinct captions of one scene
    # within an epoch every scene once
    epoch = {t[1:] for m in (0, 1) for t in s(m)[0]}
    assert len(epoch) == 8
    with pytest.raises(DatasetError, match="batch"):
        ViewSampler(pools, batch_size=11, seed=0, stream=0)


def test_view_sampler_with_twins_pairs_each_scene_with_its_twin():
    pools = [[f"a{i}", f"b{i}", f"c{i}"] for i in range(10)]
    twins = [[f"x{i}", f"y{i}"] for i in range(9)] + [[]]  # the last item has no twin: left out
    s = ViewSampler(pools, batch_size=4, seed=3, stream=0, twins=twins)
    assert s.per_epoch == 4  # 9 usable scenes, 2 per micro-batch
    texts, labels = s(1)
    assert len(texts) == 8 and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for j in range(2):
        scene, twin = texts[4 * j : 4 * j + 2], texts[4 * j + 2 : 4 * j + 4]
        i = scene[0][1:]
        assert all(t[0] in "abc" and t[1:] == i for t in scene) and scene[0] != scene[1]
        assert sorted(twin) == [f"x{i}", f"y{i}"]
    with pytest.raises(DatasetError, match="even"):
        ViewSampler(pools, batch_size=5, seed=0, stream=0, twins=twins)


def test_recipe_check_reads_settings_added_later_as_their_defaults(tmp_path):
    new = {**asdict(Stage1Cfg()), "lora_targets": list(LORA_TARGETS)}
    old = {k: v for k, v in new.items() if k not in ("positives", "hard_negatives")}
    _check_recipe(old, new, tmp_path)  # a run made before the settings existed resumes
    with pytest.raises(BundleError, match="positives"):
        _check_recipe(old, {**new, "positives": "long"}, tmp_path)
    with pytest.raises(BundleError, match="hard_negatives"):
        _check_recipe(old, {**new, "hard_negatives": True}, tmp_path)


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
    with pytest.raises(DatasetError, match="positives"):
        caption_pools(scenes, 2, 0, progress=False, positives="short")


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


# ---------------------------------------------------------------- a tiny stage-1 run

CFG = {"mntp_steps": 2, "batch_size": 4, "grad_accum": 2, "lr": 1e-3, "mntp_lr": 1e-3, "warmup_steps": 1,
       "max_tokens": 64, "paraphrases": 1, "save_every": 2, "seed": 0}


@pytest.fixture(scope="module")
def run(scenes, tiny_llm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1") / "text"
    val = scenes.root
    first = train_text(scenes, out, tiny_llm_dir, Stage1Cfg(steps=3, **CFG), val=val, progress=False)
    hist1 = json.loads((out / "history.json").read_text())
    second = train_text(scenes, out, tiny_llm_dir, Stage1Cfg(steps=6, **CFG), val=val, progress=False)
    return out, first, hist1, second


def test_resume_continues_from_the_checkpoint(run):
    out, first, hist1, second = run
    assert first["steps_run"] == {"mntp": 2, "contrastive": 3}
    assert second["resumed_from"] == {"mntp": 2, "contrastive": 3}
    assert second["steps_run"] == {"mntp": 0, "contrastive": 3}
    hist = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in hist["contrastive"]] == [1, 2, 3, 4, 5, 6]
    assert [h["step"] for h in hist["mntp"]] == [1, 2]
    # the first three steps are the first run's own (its lr followed a 3-step schedule: no restart)
    assert hist["contrastive"][:3] == hist1["contrastive"]
    assert hist["contrastive"][2]["lr"] != hist["contrastive"][3]["lr"]
    assert all(np.isfinite(h["loss"]) for h in hist["contrastive"] + hist["mntp"])


def test_rerun_done_is_a_no_op_and_other_recipe_is_refused(run, scenes, tiny_llm_dir):
    out, _, _, second = run
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    again = train_text(scenes, out, tiny_llm_dir, Stage1Cfg(steps=6, **CFG), progress=False)
    assert again == second and (out / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(BundleError, match="lora_r"):
        train_text(scenes, out, tiny_llm_dir, Stage1Cfg(steps=6, **{**CFG, "lora_r": 8}), progress=False)


def test_output_is_a_merged_hf_folder(run, tiny_llm_dir):
    out, _, _, second = run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaModel"]
    assert (out / "tokenizer.json").is_file()
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
    assert summary["mask_token_id"] == Tokenizer(tiny_llm_dir, 8)._tok.token_to_id("_")
    val = summary["val"]
    assert 0.0 <= val["before"]["caption_retrieval"] <= 1.0 and 0.0 <= val["after"]["caption_retrieval"] <= 1.0
    assert val["before"]["text_encoder"]["fingerprint"] != val["after"]["text_encoder"]["fingerprint"]
    assert summary["train"]["views_per_item"] == pytest.approx(3.0)  # long, short, one paraphrase


def test_output_feeds_stage_2(run, scenes, tmp_path):
    from training.embed import CaptionEmbeddings, embed_captions

    out = run[0]
    manifest = embed_captions(scenes, out, tmp_path / "emb", max_tokens=64, progress=False)
    assert manifest["count"] == 2 * len(scenes) and manifest["dim"] == 64
    assert manifest["text_encoder"]["name"].endswith("-llm2clip-cc")
    assert torch.isfinite(CaptionEmbeddings(tmp_path / "emb").embeddings.float()).all()


def test_long_positives_with_hard_negatives_train(scenes, tiny_llm_dir, tmp_path):
    cfg = Stage1Cfg(steps=2, **{**CFG, "mntp_steps": 0}, positives="long", hard_negatives=True)
    summary = train_text(scenes, tmp_path / "text", tiny_llm_dir, cfg, progress=False)
    assert summary["recipe"]["positives"] == "long" and summary["recipe"]["hard_negatives"] is True
    assert summary["train"]["views_per_item"] == pytest.approx(2.0)  # long and one paraphrase, no short
    pools = json.loads((tmp_path / "text" / "checkpoint" / "captions.json").read_text())
    assert not any(item.short in p for item, p in zip(scenes.items, pools, strict=True))
    twins = json.loads((tmp_path / "text" / "checkpoint" / "twins.json").read_text())
    assert twins == twin_pools(scenes, 0, progress=False)
    assert summary["contrastive"]["steps"] == 2 and np.isfinite(summary["contrastive"]["last_loss"])


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
