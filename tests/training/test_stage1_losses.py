"""Stage 1's losses: MNTP masking and targets, the mask token, and the supervised contrastive loss."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from llm2clip.text import Tokenizer
from training.stage1.losses import IGNORE, MntpMasking, mask_token_id, mntp_targets, same_text, supcon_loss

# ---------------------------------------------------------------- MNTP


def test_mntp_masks_real_tokens_and_predicts_from_the_previous_position():
    ids = torch.tensor([[100 * b + p for p in range(6)] for b in range(2)])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    gen = torch.Generator().manual_seed(0)
    masking = MntpMasking(mask_id=7, vocab_size=50, probability=1.0, mask_frac=1.0, random_frac=0.0)
    inputs, labels = masking(ids, mask, gen)
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
    inputs, labels = MntpMasking(mask_id=5, vocab_size=100)(ids, mask, gen)
    sel = labels != IGNORE
    assert not sel[:, 0].any() and not sel[mask == 0].any()
    assert sel[0, 1] and sel.any(dim=1).all()
    assert 0.17 < sel.sum() / (mask[:, 1:].sum()) < 0.23
    masked = (inputs == 5) & sel
    unchanged = (inputs == ids) & sel
    random = sel & ~masked & ~unchanged
    assert 0.75 < masked.sum() / sel.sum() < 0.85
    assert 0.06 < unchanged.sum() / sel.sum() < 0.14  # 10% kept (+ random draws that hit the same id)
    assert random.any() and (inputs[random] < 100).all()  # random tokens come from the vocabulary
    assert torch.equal(inputs[~sel], ids[~sel])


def test_mntp_masking_is_a_function_of_the_generator_seed():
    ids = torch.randint(100, 200, (8, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    masking = MntpMasking(mask_id=5, vocab_size=100)
    a = masking(ids, mask, torch.Generator().manual_seed(3))
    b = masking(ids, mask, torch.Generator().manual_seed(3))
    c = masking(ids, mask, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mask_token_is_the_configs_else_blank_else_padding(tiny_llm_dir, tmp_path):
    tok = Tokenizer(tiny_llm_dir, 8)
    blank = tok.token_id("_")
    assert blank is not None and tok.token_id("no such token in the vocabulary") is None
    assert tok.token_id("_") == tok.ids(["_"])[0][0][0]  # the id tokenizing the text gives
    assert mask_token_id(tmp_path, tok) == blank  # SmolLM2's tokenizer names no mask token

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"mask_token": {"content": "<|im_end|>"}}))
    assert mask_token_id(tmp_path, tok) == tok.token_id("<|im_end|>") != blank

    class NoBlank(Tokenizer):
        def token_id(self, token: str) -> int | None:
            return None

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"mask_token": "<mask>"}))
    assert mask_token_id(tmp_path, NoBlank(tiny_llm_dir, 8)) == tok.pad_id


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
    ignore = same_text(["a", "b", "c", "d", "e", "f", "b"])
    want_ignore = torch.eye(7, dtype=torch.bool)
    want_ignore[1, 6] = want_ignore[6, 1] = True
    assert torch.equal(ignore, want_ignore)
    z = F.normalize(emb, dim=-1)
    logits = (z @ z.t() / 0.1).masked_fill(want_ignore, float("-inf"))
    # view 6 has no positive, so it is no anchor; it stays a negative of every view but view 1
    want = F.cross_entropy(logits[:6], torch.arange(6) ^ 1)
    assert supcon_loss(emb, labels, 0.1, ignore).item() == pytest.approx(want.item(), rel=1e-5)
    assert supcon_loss(emb, labels, 0.1).item() > want.item()


def test_supcon_keeps_identical_texts_of_the_same_scene_as_positives():
    torch.manual_seed(1)
    emb = torch.randn(4, 8)
    labels = torch.tensor([0, 0, 1, 1])
    ignore = same_text(["a", "a", "b", "c"])  # one scene's two views are the same text
    assert supcon_loss(emb, labels, 0.1, ignore).item() == pytest.approx(supcon_loss(emb, labels, 0.1).item())


def test_supcon_is_computed_in_float32_under_bf16_autocast():
    torch.manual_seed(2)
    emb = torch.randn(8, 16)
    labels = torch.arange(4).repeat_interleave(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = supcon_loss(emb, labels, 0.05)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(supcon_loss(emb, labels, 0.05).item(), rel=1e-6)
