"""research.outcomes: per-seed eval results to per-query hits and twin-pair clusters, checked by hand."""

from __future__ import annotations

import pytest

from research.outcomes import HEADLINE, clusters_from_pairs, metric_outcomes, row_outcomes, seed_values
from research.stats import StatsError, compare_rows

# six scenes: (0, 1) twins both ways, 2 -> 3 one way only, 4 with 5 and 5 with 4's twin 2: one cluster {2, 3, 4, 5}
PAIRS = [[0, 1], [1, 0], [2, 3], [4, 5], [5, 2]]


def _per_query(t2i_ranks, twin_t2i, ids=None) -> dict:
    return {"ids": ids or [f"s{i}" for i in range(6)],
            "ranks": {"long": {"t2i": t2i_ranks, "i2t": [0] * 6}, "short": {"t2i": [5] * 6, "i2t": [0] * 6}},
            "twin_pairs": PAIRS,
            "twin_hits": {"long": {"t2i": twin_t2i, "i2t": [1] * 5}, "short": {"t2i": [0] * 5, "i2t": [0] * 5}}}


def _eval(t2i_ranks, twin_t2i, **kw) -> dict:
    return {"per_query": _per_query(t2i_ranks, twin_t2i, **kw)}


def test_clusters_are_connected_twins():
    assert clusters_from_pairs(6, PAIRS).tolist() == [0, 0, 2, 2, 2, 2]
    assert clusters_from_pairs(4, []).tolist() == [0, 1, 2, 3]  # no twins: every scene alone
    # three mutual twins (an odd test split) are one cluster
    assert clusters_from_pairs(5, [[0, 4], [1, 4], [2, 3]]).tolist() == [0, 0, 2, 2, 0]
    with pytest.raises(StatsError, match="outside the 3 scenes"):
        clusters_from_pairs(3, [[0, 3]])


def test_metric_outcomes_by_hand():
    seeds = [_per_query([0, 1, 0, 4, 2, 0], [1, 0, 1, 1, 0]), _per_query([1, 0, 0, 0, 9, 0], [0, 0, 1, 1, 1])]
    r1 = metric_outcomes(seeds, "t2i_r1")
    assert r1.hits.tolist() == [[1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 1]]
    assert r1.clusters.tolist() == [0, 0, 2, 2, 2, 2]
    assert metric_outcomes(seeds, "t2i_r5").hits.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 1]]
    assert metric_outcomes(seeds, "short_t2i_r5").hits.sum() == 0 and metric_outcomes(seeds, "i2t_r1").hits.all()
    twin = metric_outcomes(seeds, "twin_t2i")
    assert twin.hits.tolist() == [[1, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert twin.clusters.tolist() == [0, 0, 2, 2, 2]  # each ordered pair in its first scene's cluster
    with pytest.raises(StatsError, match="unknown metric 'r1'"):
        metric_outcomes(seeds, "r1")


def test_row_outcomes_feed_compare_rows():
    cc = [_eval([0] * 6, [1] * 5), _eval([0, 0, 0, 0, 0, 1], [1] * 5)]
    other = [_eval([3] * 6, [0] * 5)]
    rows = {"llm_cc": row_outcomes(cc), "clip77": row_outcomes(other)}
    assert list(rows["llm_cc"]) == list(HEADLINE)
    assert rows["llm_cc"]["t2i_r1"].seeds == 2 and rows["clip77"]["t2i_r1"].seeds == 1
    out = compare_rows(rows, metrics=["t2i_r1", "twin_t2i"])
    t = out["comparisons"]["t2i_r1"]["clip77"]
    # two clusters: {0, 1} d = 1; {2..5} llm_cc averages 1, 1, 1, 0.5 -> 0.875
    assert t["n_clusters"] == 2 and t["difference"] == pytest.approx((1 + 0.875) / 2)
    assert t["p"] == pytest.approx(0.5)  # 2 discordant clusters, exact: 2 of 4 patterns as extreme


def test_row_outcomes_refuse_what_cannot_be_paired():
    with pytest.raises(StatsError, match="evaluate_per_query"):
        row_outcomes([{"t2i_r1": 0.5}])
    with pytest.raises(StatsError, match="another test split"):
        row_outcomes([_eval([0] * 6, [1] * 5), _eval([0] * 6, [1] * 5, ids=[f"x{i}" for i in range(6)])])
    with pytest.raises(StatsError, match="one per seed"):
        row_outcomes([])


def test_twin_metrics_left_out_without_twins():
    e = _eval([0] * 6, [1] * 5)
    e["per_query"].update(twin_pairs=[], twin_hits=None)
    out = row_outcomes([e])
    assert "twin_t2i" not in out and "t2i_r1" in out
    assert out["t2i_r1"].clusters.tolist() == list(range(6))


def test_seed_values_from_the_summary_numbers():
    evals = [{"long": {"t2i_r1": 0.5}, "short": {"i2t_r5": 0.25}, "near_twin": {"long": {"i2t": 0.75}}},
             {"long": {"t2i_r1": 0.25}, "short": {"i2t_r5": 0.5}, "near_twin": {"long": {"i2t": 0.5}}}]
    assert seed_values(evals, "t2i_r1") == [0.5, 0.25]
    assert seed_values(evals, "short_i2t_r5") == [0.25, 0.5]
    assert seed_values(evals, "twin_i2t") == [0.75, 0.5]
    with pytest.raises(StatsError, match="no near twins"):
        seed_values([{"near_twin": None}], "twin_t2i")
