"""research.twin_significance: the paired statistics, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from research import twin_significance as sig


def test_mcnemar_by_hand():
    assert sig.mcnemar_p(0, 0) == 1.0
    assert sig.mcnemar_p(5, 5) == 1.0
    assert sig.mcnemar_p(6, 0) == pytest.approx(2 / 64)  # 6 discordant pairs, all one way
    assert sig.mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)


def test_compare_counts_only_the_discordant_pairs():
    first = np.array([True] * 60 + [False] * 40)
    other = np.array([True] * 50 + [False] * 50)
    r = sig.compare(first, other)
    assert r["difference"] == pytest.approx(0.10) and (r["only_first"], r["only_other"]) == (10, 0)
    assert r["ci95"][0] > 0 and r["p_mcnemar"] < 0.01
    same = sig.compare(first, first.copy())
    assert same["difference"] == 0 and same["p_mcnemar"] == 1.0 and same["ci95"] == [0.0, 0.0]
