"""Stage 1's views: which captions of which scenes make up micro-batch m, and the pools they come from."""

from __future__ import annotations

import json

import pytest

from llm2clip.data import Dataset
from llm2clip.data.dataset import Item
from llm2clip.errors import DatasetError
from training.stage1 import views
from training.stage1.config import Stage1Cfg
from training.stage1.views import ViewSampler, caption_pools, load_views


def test_view_sampler_is_a_function_of_the_step():
    pools = [[f"a{i}", f"b{i}", f"c{i}"] for i in range(10)] + [["alone"]]
    s = ViewSampler(pools, batch_size=4, seed=3, stream=0)
    assert s.per_epoch == 2  # the single-caption item has no positive and is left out
    texts, labels = s(5)
    again = ViewSampler(pools, batch_size=4, seed=3, stream=0)(5)
    assert texts == again[0] and labels.tolist() == again[1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):
        a, b = texts[2 * k], texts[2 * k + 1]
        assert a != b and a[1:] == b[1:]  # two distinct captions of one scene
    # within an epoch every scene once
    epoch = {t[1:] for m in (0, 1) for t in s(m)[0]}
    assert len(epoch) == 8
    # another stream (the MNTP phase) or seed draws another order
    assert ViewSampler(pools, batch_size=4, seed=3, stream=1)(5)[0] != texts
    assert ViewSampler(pools, batch_size=4, seed=4, stream=0)(5)[0] != texts
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


def _plain(tmp_path) -> Dataset:
    """Items without a scene graph: their own captions are all their views."""
    captions = [{"long": "a red bag", "short": "a bag"}, {"long": "a coat", "short": "a coat"},
                {"long": "two shoes", "short": "  "}]
    return Dataset(tmp_path, [Item(f"i{k}", f"{k}.png", c) for k, c in enumerate(captions)])


def test_items_without_a_scene_graph_get_their_distinct_captions_only(tmp_path):
    ds = _plain(tmp_path)
    assert caption_pools(ds, 2, 0, progress=False) == [["a red bag", "a bag"], ["a coat"], ["two shoes"]]
    assert caption_pools(ds, 2, 0, progress=False, positives="long") == [["a red bag"], ["a coat"], ["two shoes"]]
    with pytest.raises(DatasetError, match="positives"):
        caption_pools(ds, 2, 0, progress=False, positives="short")


def test_pools_are_built_once_per_run_folder(tmp_path, monkeypatch):
    ds, folder = _plain(tmp_path), tmp_path / "ckpt"
    folder.mkdir()
    cfg = Stage1Cfg(hard_negatives=True)
    first = load_views(folder, ds, cfg, progress=False)
    assert first.pools == json.loads((folder / "captions.json").read_text())
    assert first.twins == json.loads((folder / "twins.json").read_text()) == [[], [], []]
    assert load_views(folder, ds, Stage1Cfg(), progress=False).twins is None

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run reads its pools")

    monkeypatch.setattr(views, "caption_pools", refuse)
    monkeypatch.setattr(views, "twin_pools", refuse)
    (folder / "captions.json").write_text(json.dumps([["x", "y"]]))
    again = load_views(folder, ds, cfg, progress=False)
    assert again.pools == [["x", "y"]] and again.twins == [[], [], []]
