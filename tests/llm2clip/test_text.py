"""The LLM as a text encoder: every token sees every other (bidirectional), unlike the causal LLM it
comes from."""

from __future__ import annotations

import torch
from tiny_models import make_tiny_llm

from llm2clip.text import LLMEncoder, bidirectional_mask


def hidden_states(model, ids: torch.Tensor, mask4d: torch.Tensor | None) -> torch.Tensor:
    kwargs = {"attention_mask": mask4d} if mask4d is not None else {}
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False, **kwargs).last_hidden_state


def test_a_later_token_changes_an_earlier_tokens_state(tmp_path):
    from transformers import AutoModel

    folder = make_tiny_llm(tmp_path / "llm")
    causal = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    encoder = LLMEncoder.from_pretrained(folder, attn="sdpa")  # as captions are embedded
    ids = torch.tensor([[5, 17, 230, 1040, 77, 9]])
    changed = ids.clone()
    changed[0, -1] = 4321  # only the last token differs
    ones = torch.ones_like(ids)

    # the causal original: a token sees only what comes before it, so the first five states stay put
    before, after = hidden_states(causal, ids, None), hidden_states(causal, changed, None)
    assert torch.allclose(before[0, :-1], after[0, :-1], atol=1e-6)

    # the encoder: the first token's state moves with the last token
    mask = bidirectional_mask(ones, torch.float32)
    before, after = hidden_states(encoder.model, ids, mask), hidden_states(encoder.model, changed, mask)
    assert (before[0, 0] - after[0, 0]).abs().max() > 1e-3

    # and so does the pooled embedding the captions get
    with torch.no_grad():
        assert not torch.allclose(encoder(ids, ones), encoder(changed, ones), atol=1e-4)


def test_padding_is_invisible_to_the_real_tokens(tmp_path):
    folder = make_tiny_llm(tmp_path / "llm")
    encoder = LLMEncoder.from_pretrained(folder, attn="sdpa")
    ids = torch.tensor([[5, 17, 230, 2, 2], [5, 17, 230, 1040, 77]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        padded = encoder(ids, mask)[0]
        alone = encoder(ids[:1, :3], mask[:1, :3])[0]
    assert torch.allclose(padded, alone, atol=1e-5)
