"""The attention pool: CLIP's one mean-token query, or Q learned queries concatenated (CoCa's attentional pooler)."""

from __future__ import annotations

import torch

from llm2clip.vision import AttentionPool
from training.clip_recipe import NO_DECAY_SUFFIXES


def test_one_query_keeps_the_parameters_of_checkpoints_written_before_queries_existed():
    pool = AttentionPool(in_channels=8, width=16, heads=2, grid=3, out_dim=4)
    assert "queries" not in pool.state_dict() and pool.proj.in_features == 16
    feats = torch.randn(2, 8, 3, 3)
    x = pool.reduce(feats).flatten(2).transpose(1, 2)
    x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + pool.pos
    want, _ = pool.attn(x[:, :1], x, x)  # CLIP's: the mean token asks
    assert torch.allclose(pool(feats), pool.proj(pool.norm(want[:, 0])), atol=1e-6)


def test_learned_queries_each_pool_the_map_and_are_not_decayed():
    torch.manual_seed(0)
    pool = AttentionPool(in_channels=8, width=16, heads=2, grid=3, out_dim=4, queries=5)
    assert pool.queries.shape == (5, 16) and pool.proj.in_features == 5 * 16
    assert "visual.pool.queries".endswith(NO_DECAY_SUFFIXES)  # its name in a model: learned tokens, not weights
    feats = torch.randn(2, 8, 3, 3)
    out = pool(feats)
    assert out.shape == (2, 4)
    out.sum().backward()
    assert pool.queries.grad is not None and pool.queries.grad.abs().sum() > 0
    # each query's output reaches the projection through its own columns: moving one query moves the output
    with torch.no_grad():
        pool.queries[3] += 1.0
    assert not torch.allclose(pool(feats), out)
    moved = feats.clone()
    moved[..., 0, 0], moved[..., 2, 2] = feats[..., 2, 2], feats[..., 0, 0]  # swap two cells' features
    assert not torch.allclose(pool(moved), pool(feats), atol=1e-4)  # where a feature is changes the output
