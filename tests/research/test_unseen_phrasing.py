"""research.unseen_phrasing: the clustered drop by hand, the corpus check, and a run on a tiny real bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm2clip.data import generate_scenes
from llm2clip.data.restyle import restyle_corpus
from llm2clip.errors import DatasetError
from research import unseen_phrasing as up


def test_cluster_drop_by_hand():
    own = np.array([True] * 40 + [False] * 60)
    unseen = np.array([True] * 10 + [False] * 90)
    clusters = [np.arange(i, i + 2) for i in range(0, 100, 2)]
    r = up.cluster_drop(own, unseen, clusters)
    assert r["drop"] == pytest.approx(0.75) and (r["only_own"], r["only_unseen"]) == (30, 0)
    assert r["drop_ci95"][0] < 0.75 < r["drop_ci95"][1] and r["p_clustered"] < 1e-3
    same = up.cluster_drop(own, own.copy(), clusters)
    assert same["drop"] == 0 and same["drop_ci95"] == [0.0, 0.0] and same["p_clustered"] == 1.0
    never = up.cluster_drop(np.zeros(100, bool), unseen, clusters)
    assert never["drop"] is None and never["drop_ci95"] == [None, None]


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    root = tmp_path_factory.mktemp("styles")
    generate_scenes(root / "own", 8, "test", 5, progress=False)
    restyle_corpus(root / "own", root / "unseen", seed=5, progress=False)
    return root


def test_refuses_corpora_of_other_scenes(styles, tmp_path):
    generate_scenes(tmp_path / "other", 8, "test", 6, progress=False)
    with pytest.raises(DatasetError, match="another scene graph"):
        up.same_scenes(up.read_dataset(styles / "own"), up.read_dataset(tmp_path / "other"))


def test_runs_on_a_real_bundle(styles, tiny_bundle, tmp_path, capsys):
    out = tmp_path / "r.json"
    up.main(["--model", str(tiny_bundle), "--own", str(styles / "own"), "--unseen", str(styles / "unseen"),
             "--threads", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert (result["n"], result["n_twin_pairs"], result["n_clusters"]) == (8, 8, 4)
    for key in ("t2i_r1", "i2t_r1", "twin_t2i", "twin_i2t"):
        assert 0 <= result[key]["own"] <= 1 and 0 <= result[key]["unseen"] <= 1
    matched = result.get("length_matched")
    if matched:  # only queries whose unseen caption is no longer than the own one
        assert matched["unseen_tokens"] <= matched["own_tokens"] and matched["n"] <= 8


def test_the_length_matched_subset_scores_only_its_queries(styles):
    ds = up.read_dataset(styles / "own")  # 8 scenes, 4 twin groups
    own = {"t2i_r1": np.array([1, 1, 1, 1, 0, 0, 0, 0], bool), "i2t_r1": np.ones(8, bool)}
    unseen = {"t2i_r1": np.array([1, 0, 0, 0, 0, 0, 0, 0], bool), "i2t_r1": np.zeros(8, bool)}
    lengths = (np.full(8, 100), np.array([90, 110, 90, 110, 90, 90, 110, 110]))
    r = up.compare_styles(own, unseen, ds, [], lengths)
    assert r["t2i_r1"]["own"] == 0.5 and r["t2i_r1"]["drop"] == pytest.approx(0.75)
    m = r["length_matched"]
    assert m["n"] == 4 and m["unseen_tokens"] == 90
    # kept queries 0, 2, 4, 5: own hits 1, 1, 0, 0; unseen 1, 0, 0, 0
    assert m["t2i_r1"]["own"] == 0.5 and m["t2i_r1"]["unseen"] == 0.25 and m["t2i_r1"]["drop"] == pytest.approx(0.5)
