"""The stored states of an LLM's first layers: a model that shares them starts from them and gets its own
embedding; one that does not (LoRA below the cut, an encoder, a damaged store) computes everything itself."""

from __future__ import annotations

import numpy as np
import pytest

from llm2clip.encoders.prefix_states import PrefixStates
from llm2clip.encoders.torch_backend import TorchTextEncoder
from tests.tiny_models import make_tiny_llm

TEXTS = ["a small red bag in the top left cell", "two blue shoes on a grey background, one of them upside down",
         "a coat", "a small red bag in the top left cell and a green shirt below it, both upright"]


@pytest.fixture(scope="module")
def deep_llm(tmp_path_factory):
    """A random 4-layer Llama: two layers to share and two above them."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    folder = make_tiny_llm(tmp_path_factory.mktemp("deep"))  # for its tokenizer; the weights are replaced
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=2, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(3)
    LlamaModel(cfg).save_pretrained(folder)
    return folder


def _encoder(folder, precision="fp32"):
    return TorchTextEncoder.from_folder(folder, 64, precision=precision, normalize=False)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_second_pass_starts_from_the_stored_states_and_gives_the_same_embeddings(deep_llm, tmp_path, precision):
    plain = _encoder(deep_llm, precision).encode(TEXTS)
    store = PrefixStates(tmp_path / "prefix", 2)
    enc = _encoder(deep_llm, precision)
    assert enc.share_prefix(store)
    first = enc.encode(TEXTS)
    assert store.counts() == {"layers": 2, "reused": 0, "stored": len(TEXTS)}
    again = _encoder(deep_llm, precision)  # another load of the same model, as a later row would make
    assert again.share_prefix(store)
    second = again.encode(TEXTS[::-1])[::-1]
    assert store.counts() == {"layers": 2, "reused": len(TEXTS), "stored": len(TEXTS)}
    np.testing.assert_allclose(first, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second, plain, rtol=1e-4, atol=1e-5)


def test_a_model_with_other_top_layers_reuses_the_bottom_ones_and_one_with_other_bottom_layers_does_not(
        deep_llm, tmp_path):
    import torch

    store = PrefixStates(tmp_path / "prefix", 2)
    base = _encoder(deep_llm)
    assert base.share_prefix(store)
    base_out = base.encode(TEXTS)

    top = _encoder(deep_llm)  # as a stage-1 model with LoRA on the top two layers merged
    with torch.no_grad():
        top.llm.model.layers[3].mlp.down_proj.weight.mul_(1.5)
    own = top.encode(TEXTS)
    assert top.share_prefix(store)
    np.testing.assert_allclose(top.encode(TEXTS), own, rtol=1e-4, atol=1e-5)
    assert store.reused == len(TEXTS)
    assert np.abs(own - base_out).max() > 1e-3  # the top layers did change the embedding

    bottom = _encoder(deep_llm)
    with torch.no_grad():
        bottom.llm.model.layers[0].self_attn.q_proj.weight.mul_(1.5)
    own = bottom.encode(TEXTS)
    assert bottom.share_prefix(store)  # its own prefix: a store of its own, empty
    np.testing.assert_allclose(bottom.encode(TEXTS), own, rtol=1e-5, atol=1e-6)
    assert store.reused == len(TEXTS) and store.stored == 2 * len(TEXTS)
    assert len(list((tmp_path / "prefix").iterdir())) == 2


def test_a_stage1_model_with_lora_on_the_top_layer_shares_its_bases_first_layer(tmp_path, tiny_llm_dir):
    from llm2clip.data import generate_scenes, read_dataset
    from training.caption_retrieval import caption_retrieval
    from training.stage1.config import Stage1Cfg
    from training.stage1.loop import Run
    from training.stage1.train import train_text_run

    generate_scenes(tmp_path / "train", 8, "train", 0, progress=False)
    cfg = {"steps": 2, "batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "max_tokens": 64, "paraphrases": 1,
           "seed": 0, "grad_checkpointing": False}
    ds = read_dataset(tmp_path / "train")
    texts = [it.long for it in ds.items]
    val_texts = len(set(texts + [it.short for it in ds.items]))
    store = PrefixStates(tmp_path / "prefix", 1)
    base = _encoder(tiny_llm_dir)
    assert base.share_prefix(store)
    base.encode(texts)
    for layers, shares in ((1, True), (0, False)):
        out, reused = tmp_path / f"top-{layers}", store.reused
        summary = train_text_run(Run(Stage1Cfg(lora_layers=layers, **cfg), out, False, prefix=store), ds,
                                 tiny_llm_dir, val=ds)
        # the val caption retrieval before (the base) and after (this model): the model after shares the
        # base's first layer only with LoRA above it; its scores are the ones computed without sharing
        during = store.reused - reused
        assert during >= val_texts if shares else during == val_texts
        plain = caption_retrieval(out, ds, max_tokens=64, progress=False)
        for key in ("caption_retrieval", "long_to_short", "short_to_long"):
            assert summary["val"]["after"][key] == plain[key]
        cc = _encoder(out)
        own = cc.encode(texts)
        reused = store.reused
        assert cc.share_prefix(store)
        np.testing.assert_allclose(cc.encode(texts), own, rtol=1e-4, atol=1e-5)
        assert (store.reused - reused == len(texts)) is shares


def test_an_encoder_without_decoder_layers_shares_nothing(tmp_path):
    from llm2clip.defaults import minilm_dir

    enc = _encoder(minilm_dir())
    assert not enc.share_prefix(PrefixStates(tmp_path / "prefix", 2))
    assert not (tmp_path / "prefix").exists()
    with pytest.raises(ValueError, match="at least one layer"):
        PrefixStates(tmp_path, 0)


def test_an_interrupted_store_keeps_what_it_wrote_whole(deep_llm, tmp_path):
    store = PrefixStates(tmp_path / "prefix", 2)
    enc = _encoder(deep_llm)
    enc.share_prefix(store)
    enc.encode(TEXTS[:2])
    enc.encode(TEXTS[2:])
    (folder,) = (tmp_path / "prefix").iterdir()
    data = folder / "states.f32"
    # the last sequence's states cut short, and half an index line after it, as a killed write leaves them
    data.write_bytes(data.read_bytes()[:-8])
    with open(folder / "index.jsonl", "a") as f:
        f.write('["abc", 12')
    reopened = PrefixStates(tmp_path / "prefix", 2)
    enc = _encoder(deep_llm)
    enc.share_prefix(reopened)
    plain = _encoder(deep_llm).encode(TEXTS)
    np.testing.assert_allclose(enc.encode(TEXTS[:2]), plain[:2], rtol=1e-4, atol=1e-5)
    assert reopened.reused == 2
    # the batch with the cut sequence is computed again (and its sequences stored again, whole)
    np.testing.assert_allclose(enc.encode(TEXTS[2:]), plain[2:], rtol=1e-5, atol=1e-6)
    assert reopened.reused == 2 and reopened.stored == 1
    assert np.isfinite(enc.encode(TEXTS)).all() and reopened.reused == 2 + len(TEXTS)


def test_embed_captions_shares_the_prefix_and_records_it(deep_llm, tmp_path):
    from llm2clip.data import generate_scenes, read_dataset
    from training.config import EmbedCfg
    from training.embed import CaptionEmbeddings, embed_captions

    generate_scenes(tmp_path / "train", 6, "train", 0, progress=False)
    ds = read_dataset(tmp_path / "train")
    store, cfg = PrefixStates(tmp_path / "prefix", 2), EmbedCfg(max_tokens=64, dtype="fp32", precision="fp32")
    first = embed_captions(ds, deep_llm, tmp_path / "a", cfg, progress=False, prefix=store)
    second = embed_captions(ds, deep_llm, tmp_path / "b", cfg, progress=False, prefix=store)
    plain = embed_captions(ds, deep_llm, tmp_path / "c", cfg, progress=False)
    n = first["count"]
    assert first["prefix_states"] == {"layers": 2, "reused": 0, "stored": n}
    assert second["prefix_states"] == {"layers": 2, "reused": n, "stored": 0} and "prefix_states" not in plain
    a, b, c = (CaptionEmbeddings(tmp_path / x) for x in "abc")
    for it in ds.items:
        for key in a.keys_for(it.id):
            np.testing.assert_allclose(b.get(it.id, key).numpy(), c.get(it.id, key).numpy(), rtol=1e-4, atol=1e-5)
