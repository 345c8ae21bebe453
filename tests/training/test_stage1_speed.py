"""Stage 1's speed settings change how a step is computed, not what it computes: length buckets, the frozen
projections in bf16, norm outputs rounded once, LoRA on the top layers only."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModel

from llm2clip.errors import BundleError
from llm2clip.text import LLMEncoder, Tokenizer
from training.stage1.batches import encode, length_chunks
from training.stage1.config import Stage1Cfg
from training.stage1.lora import add_lora, merge_lora
from training.stage1.losses import same_text, supcon_loss

TEXTS = [
    "A small red bag sits in the top left cell, upside down, on a plain blue background.",
    "two items: a bag and a coat",
    "The picture holds three items. In the middle row and center column, there is a large grey sandal that is "
    "mirrored horizontally. A medium-sized green coat is placed in the bottom right cell; it stands upright.",
    "one item: a sneaker, on a checkered teal background",
    "A large orange sneaker that is upright, in the top row and left column, on a checkered teal background.",
    "Behind the items is a white, plain background, and a shirt lies to the left of the trousers.",
]
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def original_cut(lengths: list[int]) -> list[list[int]]:
    """The single long/short cut stage 1 made before length buckets (the reference for max_chunks=2)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best, cut = len(order) * lengths[order[-1]], len(order)
    for c in range(1, len(order)):
        cost = c * lengths[order[c - 1]] + (len(order) - c) * lengths[order[-1]]
        if cost < best:
            best, cut = cost, c
    return [ch for ch in (order[:cut], order[cut:]) if ch]


def padded(lengths: list[int], chunks: list[list[int]]) -> int:
    return sum(len(c) * max(lengths[i] for i in c) for c in chunks)


def test_two_length_chunks_are_the_original_cut():
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.choice([12, 20, 20, 60, 90, 150, 190, 250]) + rng.randrange(8) for _ in range(rng.randrange(1, 20))]
        assert length_chunks(lengths) == original_cut(lengths)


def test_more_length_chunks_pad_less_and_keep_every_text_once():
    rng = random.Random(1)
    for _ in range(200):
        lengths = [rng.randrange(30, 260) for _ in range(16)]
        two, four = length_chunks(lengths, 2), length_chunks(lengths, 4)
        assert sorted(i for c in four for i in c) == list(range(16)) and len(four) <= 4
        assert padded(lengths, four) <= padded(lengths, two)
    # a cut must save more padding than the per-call overhead
    assert length_chunks([100, 101, 102], 4, overhead=32) == [[0, 1, 2]]
    assert length_chunks([10, 10, 200, 200], 4, overhead=32) == [[0, 1], [2, 3]]
    assert length_chunks([], 4) == []


@pytest.fixture(scope="module")
def tok(tiny_llm_dir):
    return Tokenizer(tiny_llm_dir, 512)


def _encoder(tiny_llm_dir, cfg: Stage1Cfg):
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(tiny_llm_dir), dtype=torch.float32, attn_implementation="sdpa")
    enc = LLMEncoder(model)
    peft_model = add_lora(model, cfg)
    # a fresh LoRA's B is zero: give it a value, so that the LoRA path counts in the comparisons
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    return enc, peft_model


def _loss(enc, tok, buckets: int = 2) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return supcon_loss(encode(enc, tok, TEXTS, buckets), LABELS, 0.05, same_text(TEXTS))


def test_length_buckets_give_the_embeddings_of_one_padded_batch(tiny_llm_dir, tok):
    enc, _ = _encoder(tiny_llm_dir, Stage1Cfg(bf16=False, cast_once=False))
    with torch.no_grad():
        ids, mask, _ = tok(TEXTS)
        whole = enc(torch.from_numpy(ids), torch.from_numpy(mask))
        for buckets in (1, 2, 4, 6):
            assert torch.allclose(encode(enc, tok, TEXTS, buckets), whole, atol=1e-5)


def test_bf16_weights_are_the_autocast_products_and_merge_in_float32(tiny_llm_dir, tok):
    ref_enc, ref = _encoder(tiny_llm_dir, Stage1Cfg(bf16_weights=False, cast_once=False, grad_checkpointing=False))
    enc, fast = _encoder(tiny_llm_dir, Stage1Cfg(bf16_weights=True, cast_once=False, grad_checkpointing=False))
    bases = [m.base_layer for m in fast.modules() if hasattr(m, "base_layer")]
    assert bases and all(b.weight.dtype == torch.bfloat16 for b in bases)
    want, got = _loss(ref_enc, tok), _loss(enc, tok)
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    want.backward()
    got.backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    for n, p in fast.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6), n
    # the merged model holds the float32 weights plus the LoRA, as without bf16 weights
    merged, ref_merged = merge_lora(fast).state_dict(), merge_lora(ref).state_dict()
    assert all(merged[k].dtype == torch.float32 and torch.equal(merged[k], ref_merged[k]) for k in merged)


def test_norm_outputs_rounded_once_keep_the_loss_and_the_gradients(tiny_llm_dir, tok):
    ref_enc, ref = _encoder(tiny_llm_dir, Stage1Cfg(cast_once=False, grad_checkpointing=False))
    enc, fast = _encoder(tiny_llm_dir, Stage1Cfg(cast_once=True, grad_checkpointing=False))
    assert len(fast.stage1_hooks) == 4  # 2 layers x (input, post-attention) norm
    want, got = _loss(ref_enc, tok), _loss(enc, tok)
    assert got.item() == pytest.approx(want.item(), abs=1e-6)  # the same forward
    want.backward()
    got.backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    for n, p in fast.named_parameters():
        if p.requires_grad:  # the gradients' sums in bf16 instead of float32
            cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), ref_grads[n].flatten(), dim=0)
            assert cos > 0.999, n
    norm = fast.base_model.model.layers[0].post_attention_layernorm
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(torch.ones(1, 2, 64)).dtype == torch.bfloat16
        model = merge_lora(fast)
        assert model.layers[0].input_layernorm(torch.ones(1, 2, 64)).dtype == torch.float32  # hooks gone


def test_lora_on_the_top_layers_only(tiny_llm_dir, tok):
    enc, peft_model = _encoder(tiny_llm_dir, Stage1Cfg(lora_layers=1, grad_checkpointing=False))
    trained = {n.split("layers.")[1].split(".")[0] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trained == {"1"}
    _loss(enc, tok).backward()  # the bottom layer is not in the graph: its frozen weights get nothing
    assert all(p.grad is None for p in peft_model.parameters() if not p.requires_grad)
    with pytest.raises(BundleError, match="at most 2"):
        _encoder(tiny_llm_dir, Stage1Cfg(lora_layers=3))


def test_eager_attention_gives_the_sdpa_embeddings(tiny_llm_dir, tok):
    from training.stage1.lora import load_encoder_base

    ids, mask, _ = tok(TEXTS)
    with torch.no_grad():
        got = {attn: LLMEncoder(load_encoder_base(tiny_llm_dir, attn))(torch.from_numpy(ids), torch.from_numpy(mask))
               for attn in ("sdpa", "eager")}
    assert torch.allclose(got["eager"], got["sdpa"], atol=1e-5)


def test_unknown_attention_is_refused(tiny_llm_dir, tmp_path):
    from llm2clip.errors import DatasetError
    from training.stage1.train import train_text

    with pytest.raises(DatasetError, match="choose among sdpa, eager"):
        train_text(tmp_path / "none", tmp_path / "out", tiny_llm_dir, Stage1Cfg(attention="flash"))
