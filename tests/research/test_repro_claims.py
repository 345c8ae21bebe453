"""research.repro_claims: the paper's claims judged from the report's paired tests."""

from __future__ import annotations

import numpy as np

from research import repro_claims as rc
from research import repro_styles as rs
from research.compare_models import METRICS, metric_name


def _t(difference: float, significant: bool) -> dict:
    return {"difference": difference, "significant": significant}


def _metrics(t2i: dict, i2t: dict, **others: dict) -> dict:
    out = {metric_name(m): _t(0.0, False) for m in METRICS}
    out.update({"own long t2i R@1": t2i, "own long i2t R@1": i2t, **others})
    return out


def test_a_claim_holds_only_when_both_directions_agree_after_holm():
    assert rc.verdict(_metrics(_t(0.1, True), _t(0.05, True)), +1) == "holds"
    assert rc.verdict(_metrics(_t(0.1, True), _t(0.05, True)), -1) == "reversed"
    assert rc.verdict(_metrics(_t(0.1, True), _t(0.05, False)), +1) == "holds on t2i"
    assert rc.verdict(_metrics(_t(0.1, True), _t(-0.05, True)), +1) == "holds on t2i; reversed on i2t"
    # a large difference that does not survive Holm is not shown, in either direction
    assert rc.verdict(_metrics(_t(0.3, False), _t(-0.3, False)), +1) == "not shown"


def test_claims_read_the_comparisons_present_and_list_other_differences():
    tests = {"family": 14, "comparisons": {
        "llm_cc-clip77": _metrics(_t(0.2, True), _t(0.1, True), **{"own short t2i R@1": _t(-0.08, True)}),
        "llm_nocc-clip77": _metrics(_t(0.08, True), _t(0.02, False)),
        "llm_cc-llm_nocc": _metrics(_t(0.1, True), _t(0.1, True)),
    }}
    records = rc.claims(tests)
    assert [r["comparison"] for r in records] == ["llm_cc - clip77", "llm_nocc - clip77", "llm_cc - llm_nocc"]
    assert [r["verdict"] for r in records] == ["holds", "reversed on t2i", "holds"]
    assert records[0]["other_significant"] == {"own short t2i R@1": -0.08}
    md = "\n".join(rc.claims_markdown(tests))
    assert "| LLM2CLIP beats CLIP's text encoder on long captions | llm_cc - clip77 | +0.200 | +0.100 | **holds** |" \
        " own short t2i R@1 -0.080 |" in md
    assert "over all 14 tests" in md
    assert rc.claims(None) == [] and rc.claims_markdown({"family": 0, "comparisons": {}}) == []


def test_claims_from_real_paired_tests_follow_the_hits():
    """Built from per-query outcomes by repro_styles.paired_tests: llm_cc far ahead, llm_nocc far behind clip77."""
    rng = np.random.default_rng(1)
    n = 80

    def seed(p: float) -> dict:
        ranks = list(np.where(rng.random(n) < p, 0, 7))
        per_query = {"ids": [f"s{i}" for i in range(n)], "twin_pairs": [[i, i + 1] for i in range(0, n, 2)],
                     "ranks": {"long": {"t2i": ranks, "i2t": ranks}, "short": {"t2i": ranks, "i2t": ranks}}}
        return {"own": per_query, "unseen": per_query, "unseen_eval": {}}

    outcomes = {"llm_cc": [seed(0.9), seed(0.9)], "llm_nocc": [seed(0.1), seed(0.1)],
                "clip77": [seed(0.5), seed(0.5)]}
    tests = rs.paired_tests(outcomes, {name: {"folder": name} for name in outcomes})
    verdicts = {r["comparison"]: r["verdict"] for r in rc.claims(tests)}
    assert verdicts == {"llm_cc - clip77": "holds", "llm_nocc - clip77": "holds", "llm_cc - llm_nocc": "holds"}
