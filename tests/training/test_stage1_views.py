"""Stage 1's views: which captions of which scenes make up micro-batch m, and the pools they come from."""

from __future__ import annotations

import json
from dataclasses import replace

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


def test_views_in_other_words_keep_the_facts_of_the_long_style_text_they_rewrite(tmp_path):
    from llm2clip.data import generate_scenes
    from tests.llm2clip.data.test_lexical import canonical
    from training.stage1.views import twin_pools

    ds = generate_scenes(tmp_path / "train", 12, "train", seed=5, progress=False)
    plain = caption_pools(ds, 1, 0, progress=False)
    words = caption_pools(ds, 1, 0, progress=False, words=2)
    added = 0
    for item, a, b in zip(ds, plain, words, strict=True):
        assert b[: len(a)] == a and len(b) <= len(a) + 2 and len(set(b)) == len(b)
        longs = {canonical(t) for t in a if t != item.captions["short"]}
        for text in b[len(a):]:
            added += 1
            assert canonical(text) in longs  # a long-style view with synonyms: never the short caption
    assert added >= 12  # most draws swap at least one word
    assert caption_pools(ds, 1, 0, progress=False, words=2) == words  # a function of the seed
    assert caption_pools(ds, 1, 1, progress=False, words=2) != words
    twins, twins_w = twin_pools(ds, 0, progress=False), twin_pools(ds, 0, progress=False, words=1)
    assert all(w[:2] == t and canonical(w[-1]) in {canonical(x) for x in t} for t, w in zip(twins, twins_w, strict=True))
    assert any(len(w) == 3 for w in twins_w)


def test_alt_views_state_the_facts_of_the_scene_and_of_its_twin(tmp_path):
    from llm2clip.data import generate_scenes
    from llm2clip.data.scene_graph import SceneGraph
    from tests.llm2clip.data.test_alt_captions import check
    from training.stage1.views import twin_graphs, twin_pools

    ds = generate_scenes(tmp_path / "train", 10, "train", seed=5, progress=False)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    cfg = Stage1Cfg(hard_negatives=True, positives="long", paraphrases=1, other_words=1, alt_views=2)
    got = load_views(folder, ds, cfg, progress=False)
    plain = caption_pools(ds, 1, 0, progress=False, positives="long", words=1)
    twins_plain = twin_pools(ds, 0, progress=False, words=1)
    for item, pool, before, twin, tw_before, tw_graph in zip(ds, got.pools, plain, got.twins, twins_plain,
                                                             twin_graphs(ds, 0), strict=True):
        # the alt views come after every other view, two more of the scene and two of its twin
        assert pool[: len(before)] == before and len(pool) == len(before) + 2
        assert twin[: len(tw_before)] == tw_before and len(twin) == len(tw_before) + 2
        for text in pool[len(before):]:
            check(text, SceneGraph.from_json(item.meta))  # every fact of the scene, right
        for text in twin[len(tw_before):]:
            check(text, SceneGraph.from_json(tw_graph))  # ... and of its twin, which differs in one
            with pytest.raises(AssertionError):
                check(text, SceneGraph.from_json(item.meta))
    # a function of the seed: the same run folder's texts again, another seed's differ
    again = tmp_path / "again"
    again.mkdir()
    assert load_views(again, ds, cfg, progress=False).pools == got.pools
    other = tmp_path / "other"
    other.mkdir()
    drawn = load_views(other, ds, replace(cfg, seed=1), progress=False).pools
    assert [p[-2:] for p in drawn] != [p[-2:] for p in got.pools]
    # no alt views by default; items without a scene graph get none
    none = tmp_path / "none"
    none.mkdir()
    assert load_views(none, ds, replace(cfg, alt_views=0), progress=False).pools == plain
    assert views.with_alt([["a bag"]], [{}], 2, [0, 2]) == [["a bag"]]
