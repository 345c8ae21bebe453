"""research.twin_batches_probe: a train corpus of twin pairs, and epoch orders that keep each pair together."""

from __future__ import annotations

import pytest
import torch

import llm2clip.data.generator as gen
from research import twin_batches_probe as probe


def test_the_train_corpus_comes_in_twin_pairs_from_train_photos(tmp_path):
    plan = gen._plan
    ds = probe.write_twin_corpus(tmp_path / "train", 8, 0, progress=False)
    assert gen._plan is plan  # the generator is left as it was
    for p in range(4):
        a, b = ds.items[2 * p], ds.items[2 * p + 1]
        assert a.meta["split"] == "train" and a.meta["twin_of"] == [b.id] and b.meta["twin_of"] == [a.id]
        diff = a.meta["twin_diff"]
        k = diff["object"]
        changed = {key for key in a.meta["objects"][k] if a.meta["objects"][k][key] != b.meta["objects"][k][key]}
        assert diff["attribute"] in {"cell"} | set(changed) and changed  # one object differs
    plain = gen.generate_scenes(tmp_path / "plain", 2, "train", 0, progress=False)
    assert "twin_of" not in plain.items[0].meta  # the ordinary train split still has no twins


def test_an_epoch_order_keeps_each_pair_in_one_batch():
    order = probe.pair_permutation(20, generator=torch.Generator().manual_seed(3))
    assert sorted(order.tolist()) == list(range(20))
    assert all(order[i] // 2 == order[i + 1] // 2 and order[i] % 2 == 0 for i in range(0, 20, 2))
    other = probe.pair_permutation(20, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(order, other)  # a random order, not a fixed one
    with pytest.raises(SystemExit, match="even number"):
        probe.pair_permutation(7)


def test_training_restores_torch_randperm_even_when_it_fails():
    with pytest.raises(SystemExit):
        probe.main(["train", "--no-such-option"])
    assert torch.randperm is probe._randperm
