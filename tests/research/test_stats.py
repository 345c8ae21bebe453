"""research.stats: mean ± sd, the clustered paired test and Holm, against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from research import stats
from research.stats import (
    Outcomes,
    StatsError,
    cluster_means,
    compare_rows,
    fmt_comparison,
    fmt_mean_sd,
    holm,
    mean_sd,
    paired_cluster_test,
    seeds_note,
)
from training.eval import sign_test_tail


def test_mean_sd_and_its_cell():
    mean, sd = mean_sd([0.46, 0.47, 0.48])
    assert mean == pytest.approx(0.47) and sd == pytest.approx(0.01)  # ddof=1: sqrt(0.0002 / 2)
    assert mean_sd([0.468]) == (0.468, None)
    assert fmt_mean_sd([0.46, 0.47, 0.48]) == "0.470 ± 0.010"
    assert fmt_mean_sd([0.4684]) == "0.468"  # one seed: no spread to show
    assert fmt_mean_sd([0.46, 0.47, 0.48], digits=2) == "0.47 ± 0.01"
    with pytest.raises(StatsError, match="at least one value"):
        mean_sd([])
    with pytest.raises(StatsError, match="non-finite"):
        mean_sd([0.5, float("nan")])


def test_seeds_note_says_what_n_is():
    assert seeds_note({"llm_cc": 3, "clip77": 3}) == "mean ± sd (sample sd, n−1) over n=3 seeds per row."
    assert seeds_note({"llm_cc": 3, "clip77": 1}) == ("mean ± sd (sample sd, n−1) over each row's seeds: llm_cc 3, "
                                                      "clip77 1; a row with one seed shows no sd.")
    assert seeds_note({"llm_cc": 1}) == "n=1 seed per row: no sd."


def test_cluster_means_average_seeds_then_within_unequal_clusters():
    ids, means = cluster_means(np.array([1, 1, 0, 1]), np.array([0, 0, 0, 1]))
    assert ids.tolist() == [0, 1] and means == pytest.approx([2 / 3, 1.0])
    # two seeds: per query [0.5, 0, 1]; cluster 5 holds the first two
    ids, means = cluster_means(np.array([[1, 0, 1], [0, 0, 1]]), np.array([5, 5, 7]))
    assert ids.tolist() == [5, 7] and means == pytest.approx([0.25, 1.0])


def test_a_cluster_counts_once_however_many_queries_it_holds():
    # cluster 0: three queries, a right on all, b on none (d = 1); cluster 1: one query both get (d = 0)
    a, b, clusters = np.array([1, 1, 1, 1]), np.array([0, 0, 0, 1]), np.array([0, 0, 0, 1])
    r = paired_cluster_test(a, b, clusters)
    assert r.difference == pytest.approx(0.5)  # mean of d_c = (1 + 0) / 2, not the per-query 0.75
    assert (r.mean_a, r.mean_b) == (pytest.approx(1.0), pytest.approx(0.5))
    assert (r.n_clusters, r.discordant, r.a_ahead, r.b_ahead) == (2, 1, 1, 0)
    assert r.p == 1.0  # one discordant cluster: both sign patterns are as extreme


def test_exact_enumeration_matches_a_hand_computed_case():
    # d_c = [1, 1, 0.5, 0] from clusters of 2, 2, 4 and 2 queries
    clusters = np.array([0, 0, 1, 1, 2, 2, 2, 2, 3, 3])
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 0])
    b = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    r = paired_cluster_test(a, b, clusters)
    # sums of +-1 +-1 +-0.5: 2.5 1.5 0.5 -0.5 0.5 -0.5 -1.5 -2.5; |sum| >= 2.5 in 2 of 8
    assert r.method == "exact" and r.p == pytest.approx(0.25)
    assert r.difference == pytest.approx(2.5 / 4) and r.discordant == 3
    # six clusters all one way: 2 of 64 patterns
    six = np.arange(6)
    assert paired_cluster_test(np.ones(6), np.zeros(6), six).p == pytest.approx(2 / 64)


@pytest.mark.parametrize(("n", "ahead"), [(10, 8), (30, 21)])
def test_equal_size_differences_give_the_sign_test(n, ahead):
    # every d_c is +-1: the sign-flip test is the exact two-sided sign test; 30 clusters take the Monte
    # Carlo path (more than EXACT_MAX differ), whose p must land on it within a few standard errors
    a = np.r_[np.ones(ahead), np.zeros(n - ahead)]
    r = paired_cluster_test(a, 1 - a, np.arange(n), n_perm=20_000, seed=3)
    expected = 2 * sign_test_tail(n, ahead)
    assert r.method == ("exact" if n <= stats.EXACT_MAX else "monte-carlo (20000)")
    assert r.p == pytest.approx(expected, abs=0.006 if n > stats.EXACT_MAX else 1e-12)


def test_duplicating_queries_within_clusters_leaves_the_test_unchanged():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(60), 2)
    a = (rng.random((3, 120)) < 0.6).astype(float)
    b = (rng.random((1, 120)) < 0.5).astype(float)
    r = paired_cluster_test(a, b, clusters, seed=1)
    twice = paired_cluster_test(np.repeat(a, 2, axis=1), np.repeat(b, 2, axis=1), np.repeat(clusters, 2), seed=1)
    assert twice.p == r.p and twice.n_clusters == r.n_clusters == 60
    assert twice.ci95 == pytest.approx(r.ci95, abs=1e-12) and twice.difference == pytest.approx(r.difference)
    # the bug this replaces: every query its own cluster, so copies count as evidence and p shrinks
    naive = paired_cluster_test(a, b, np.arange(120), seed=1)
    naive_twice = paired_cluster_test(np.repeat(a, 2, axis=1), np.repeat(b, 2, axis=1), np.arange(240), seed=1)
    assert naive_twice.p < naive.p / 2


def test_a_large_difference_is_found_and_no_difference_is_not():
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(100), 4)
    good = (rng.random((3, 400)) < 0.9).astype(float)
    bad = (rng.random((3, 400)) < 0.3).astype(float)
    r = paired_cluster_test(good, bad, clusters)
    assert r.p < 0.01 and r.ci95[0] > 0.4 and r.difference == pytest.approx(0.6, abs=0.05)
    assert r.p == pytest.approx(1 / 10_001)  # no flip is as extreme: the +1 correction, never 0
    same = paired_cluster_test(good, good.copy(), clusters)
    assert same.p == 1.0 and same.ci95 == (0.0, 0.0) and same.difference == 0 and same.discordant == 0


def test_seed_counts_may_differ_between_models():
    a = np.array([[1, 1], [1, 0], [0, 0]])  # 3 seeds: per query 2/3, 1/3
    b = np.array([[0, 0]])
    r = paired_cluster_test(a, b, np.array([0, 1]))
    assert r.seeds == (3, 1) and r.mean_a == pytest.approx(0.5) and r.difference == pytest.approx(0.5)
    assert r.as_dict()["seeds"] == [3, 1]


def test_bad_inputs_are_errors_that_say_what_is_wrong():
    with pytest.raises(StatsError, match="one id per query"):
        paired_cluster_test(np.ones(4), np.ones(4), np.arange(3))
    with pytest.raises(StatsError, match="queries"):
        paired_cluster_test(np.ones(4), np.ones(3), np.arange(4))
    with pytest.raises(StatsError, match="0/1"):
        Outcomes(np.array([0, 2]), np.arange(2))


def test_holm_matches_hand_computed_values_and_is_monotone():
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}
    # sorted d a c b: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> raised to 0.06
    adjusted = holm(p)
    assert list(adjusted) == ["a", "b", "c", "d"]
    assert adjusted == {"a": pytest.approx(0.03), "b": pytest.approx(0.06), "c": pytest.approx(0.06),
                        "d": pytest.approx(0.02)}
    order = sorted(p, key=p.get)
    assert all(adjusted[x] <= adjusted[y] for x, y in zip(order, order[1:], strict=False))
    assert all(adjusted[k] >= p[k] for k in p)
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}
    assert holm({"only": 0.02}) == {"only": 0.02}
    with pytest.raises(StatsError, match=r"\[0, 1\]"):
        holm({"x": 1.5})


def _rows() -> dict[str, dict[str, Outcomes]]:
    # six clusters of two queries; llm_cc right on all, weak on none, twin identical to llm_cc
    clusters = np.repeat(np.arange(6), 2)
    ones, zeros = np.ones(12), np.zeros(12)
    return {"llm_cc": {"t2i": Outcomes(ones, clusters), "i2t": Outcomes(ones, clusters)},
            "weak": {"t2i": Outcomes(zeros, clusters), "i2t": Outcomes(zeros, clusters)},
            "twin": {"t2i": Outcomes(ones, clusters), "i2t": Outcomes(ones, clusters)}}


def test_compare_rows_calls_a_difference_only_when_it_survives_holm():
    rows = _rows()
    one = compare_rows({k: rows[k] for k in ("llm_cc", "weak")}, metrics=["t2i"])
    t = one["comparisons"]["t2i"]["weak"]
    assert one["family"] == 1 and t["p"] == pytest.approx(2 / 64) and t["significant"]  # 0.031 < 0.05
    both = compare_rows(rows)
    assert both["family"] == 4 and list(both["comparisons"]) == ["t2i", "i2t"]
    for metric in ("t2i", "i2t"):
        weak, twin = both["comparisons"][metric]["weak"], both["comparisons"][metric]["twin"]
        # raw p 2/64 twice and 1 twice in a family of 4: the smallest times 4 = 8/64, no longer a difference
        assert weak["p"] == pytest.approx(2 / 64) and weak["p_holm"] == pytest.approx(8 / 64)
        assert not weak["significant"] and weak["difference"] == 1.0
        assert twin["p"] == 1.0 and twin["p_holm"] == 1.0 and not twin["significant"]
    assert fmt_comparison(both["comparisons"]["t2i"]["weak"]) == "+1.000 [+1.000, +1.000] p=0.125"
    assert fmt_comparison(one["comparisons"]["t2i"]["weak"]) == "+1.000 [+1.000, +1.000] p=0.031*"


def test_compare_rows_refuses_rows_scored_on_other_queries():
    rows = _rows()
    rows["weak"]["t2i"] = Outcomes(np.zeros(12), np.repeat(np.arange(1, 7), 2))
    with pytest.raises(StatsError, match="same test split"):
        compare_rows(rows)
    with pytest.raises(StatsError, match="reference row"):
        compare_rows(rows, reference="nope")
    with pytest.raises(StatsError, match="no 'r1' outcomes"):
        compare_rows(rows, metrics=["r1"])
