"""research.compare_models: the Holm family on made-up per-query ranks, and a run on a tiny real bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm2clip.data import generate_scenes
from llm2clip.data.restyle import restyle_corpus
from research import compare_models as cm


def _per_query(t2i_long: np.ndarray, n: int = 40) -> dict:
    """Ranks of n queries in 20 twin pairs: the long T2I ranks given, every other rank 3 (a miss at R@1, a hit at
    R@5)."""
    other = [3] * n
    return {"ranks": {"long": {"t2i": list(t2i_long), "i2t": other}, "short": {"t2i": other, "i2t": other}},
            "twin_pairs": [[i, i + 1] for i in range(0, n, 2)]}


def test_a_clear_difference_survives_holm_and_equal_arms_do_not_differ():
    rng = np.random.default_rng(0)
    good = [_per_query(np.where(rng.random(40) < 0.9, 0, 7)) for _ in range(2)]
    bad = [_per_query(np.where(rng.random(40) < 0.1, 0, 7)) for _ in range(2)]
    arms = {"X": {"own": good, "unseen": bad}, "Y": {"own": bad, "unseen": bad}}
    r = cm.family(arms, [("X", "Y")])
    assert r["family"] == len(cm.METRICS)
    own = r["comparisons"]["X-Y"]["own long t2i R@1"]
    assert own["difference"] > 0.6 and own["significant"] and own["p_holm"] >= own["p"]
    for name, t in r["comparisons"]["X-Y"].items():
        if name != "own long t2i R@1":  # the same ranks on both sides
            assert t["difference"] == 0 and t["p"] == 1 and not t["significant"]
    assert r["means"]["X"]["own long t2i R@1"] == [float(np.mean(np.array(g["ranks"]["long"]["t2i"]) == 0))
                                                   for g in good]
    assert r["means"]["X"]["unseen long t2i R@5"][0] == pytest.approx(np.mean(np.array(bad[0]["ranks"]["long"]["t2i"]) < 5))


def test_near_twins_join_the_family_one_cluster_per_twin_group():
    """--near-twins: each ordered twin pair is a query; both orders of a pair fall in one cluster."""
    n = 40
    pairs = [[i, i + 1] for i in range(0, n, 2)] + [[i + 1, i] for i in range(0, n, 2)]

    def with_twins(told: np.ndarray) -> dict:
        pq = _per_query(np.zeros(n, dtype=int), n)
        pq["twin_pairs"] = pairs
        pq["twin_hits"] = {"long": {"t2i": told.astype(int).tolist(), "i2t": [1] * len(pairs)},
                           "short": {"t2i": [0] * len(pairs), "i2t": [0] * len(pairs)}}
        return pq

    good = with_twins(np.ones(len(pairs), dtype=bool))
    half = with_twins(np.arange(len(pairs)) % 2 == 0)
    arms = {"X": {"own": [good], "unseen": [good]}, "Y": {"own": [half], "unseen": [half]}}
    plain = cm.family(arms, [("X", "Y")])
    r = cm.family(arms, [("X", "Y")], cm.METRICS + cm.TWIN_METRICS)
    assert r["family"] == plain["family"] + 2 == len(cm.METRICS) + 2
    twin = r["comparisons"]["X-Y"]["own long near-twin t2i"]
    assert twin["difference"] == pytest.approx(0.5) and twin["n_clusters"] == n // 2
    assert r["comparisons"]["X-Y"]["own long near-twin i2t"]["difference"] == 0
    assert r["means"]["Y"]["own long near-twin t2i"] == [0.5]
    clusters = cm.clusters(good, cm.TWIN_METRICS[0])
    assert len(clusters) == len(pairs) and clusters[0] == clusters[n // 2]  # (0, 1) and (1, 0): one group


def test_holm_grows_with_the_family():
    rng = np.random.default_rng(1)
    a = [_per_query(np.where(rng.random(40) < 0.6, 0, 7))]
    b = [_per_query(np.where(rng.random(40) < 0.3, 0, 7))]
    one = cm.family({"X": {"own": a, "unseen": a}, "Y": {"own": b, "unseen": b}}, [("X", "Y")])
    two = cm.family({"X": {"own": a, "unseen": a}, "Y": {"own": b, "unseen": b}, "Z": {"own": b, "unseen": b}},
                    [("X", "Y"), ("X", "Z")])
    t1, t2 = one["comparisons"]["X-Y"]["own long t2i R@1"], two["comparisons"]["X-Y"]["own long t2i R@1"]
    assert t1["p"] == t2["p"] and t2["p_holm"] > t1["p_holm"]


def test_runs_on_a_real_bundle_and_caches(tiny_bundle, tmp_path, capsys):
    generate_scenes(tmp_path / "own", 8, "val", 3, progress=False)
    restyle_corpus(tmp_path / "own", tmp_path / "unseen", seed=3, progress=False)
    argv = ["--own", str(tmp_path / "own"), "--unseen", str(tmp_path / "unseen"), "--arm", f"A={tiny_bundle}",
            "--arm", f"B={tiny_bundle},{tiny_bundle}", "--compare", "B-A", "--cache", str(tmp_path / "cache"),
            "--threads", "1", "--json", str(tmp_path / "r.json")]
    assert cm.main(argv) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r == json.loads(capsys.readouterr().out)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one bundle, two corpora: scored once each
    for t in r["comparisons"]["B-A"].values():  # the same model on both sides
        assert t["difference"] == 0 and not t["significant"] and t["n_clusters"] == 4
    with pytest.raises(SystemExit):
        cm.main([*argv[:8], "--compare", "B-Q"])
    assert "no --arm gives: Q" in capsys.readouterr().err


def test_saved_scores_stand_in_for_their_bundle_on_the_same_corpora_only(tiny_bundle, tmp_path, capsys):
    generate_scenes(tmp_path / "own", 8, "val", 3, progress=False)
    restyle_corpus(tmp_path / "own", tmp_path / "unseen", seed=3, progress=False)
    corpora = ["--own", str(tmp_path / "own"), "--unseen", str(tmp_path / "unseen"), "--threads", "1"]
    cache, saved = str(tmp_path / "cache"), tmp_path / "scores"
    assert cm.main([*corpora, "--arm", f"A={tiny_bundle}", "--arm", f"B={tiny_bundle},{tiny_bundle}",
                    "--compare", "B-A", "--cache", cache, "--save-scores", str(saved)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in saved.iterdir()) == ["A-0.json", "B-0.json", "B-1.json"]
    record = json.loads((saved / "A-0.json").read_text())
    assert record["arm"] == "A" and len(record["model"]) == 64 and str(tmp_path) not in (saved / "A-0.json").read_text()
    # no bundle and no cache: the files alone give the same family
    assert cm.main([*corpora, "--arm", f"A={saved / 'A-0.json'}", "--arm", f"B={saved / 'B-0.json'},{saved / 'B-1.json'}",
                    "--compare", "B-A", "--cache", str(tmp_path / "empty")]) == 0
    assert json.loads(capsys.readouterr().out) == first and not (tmp_path / "empty").exists()
    # other scenes: refused, not paired query by query with the wrong ones
    generate_scenes(tmp_path / "other", 8, "val", 4, progress=False)
    with pytest.raises(SystemExit, match="another own corpus"):
        cm.main(["--own", str(tmp_path / "other"), *corpora[2:], "--arm", f"A={saved / 'A-0.json'}",
                 "--arm", f"B={tiny_bundle}", "--compare", "B-A", "--cache", cache])
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a --save-scores file"):
        cm.main([*corpora, "--arm", f"A={tmp_path / 'bad.json'}", "--arm", f"B={tiny_bundle}", "--compare", "B-A",
                 "--cache", cache])
