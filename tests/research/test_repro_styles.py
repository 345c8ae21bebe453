"""research.repro_styles: a row on both caption styles from one gallery, the drops, the paired tests between rows
and their tables."""

from __future__ import annotations

import numpy as np
import pytest

from llm2clip.data import generate_scenes, read_dataset
from research import repro_styles as rs
from research.compare_models import METRICS
from research.repro_scoring import MemoImages, RowScoring


def _outcome(own_t2i: list[int], unseen_t2i: list[int]) -> dict:
    """Both styles of one seed: the long T2I ranks given, every other rank 3; twins (0, 1), (2, 3), ..."""
    n = len(own_t2i)

    def per_query(t2i: list[int]) -> dict:
        other = [3] * n
        return {"ids": [f"s{i}" for i in range(n)], "twin_pairs": [[i, i + 1] for i in range(0, n, 2)],
                "ranks": {"long": {"t2i": list(t2i), "i2t": other}, "short": {"t2i": other, "i2t": other}}}

    return {"own": per_query(own_t2i), "unseen": per_query(unseen_t2i), "unseen_eval": {}}


def test_drops_are_one_minus_unseen_over_own_per_seed():
    seeds = [_outcome([0, 0, 0, 0, 5, 5, 5, 5], [0, 5, 5, 5, 5, 5, 5, 5]),
             _outcome([0, 0, 5, 5, 5, 5, 5, 5], [0, 0, 5, 5, 5, 5, 5, 5])]
    d = rs.drops(seeds)
    assert d["own t2i"] == [0.5, 0.25] and d["unseen t2i"] == [0.125, 0.25]
    assert d["drop t2i"] == [pytest.approx(0.75), 0.0]
    assert d["own i2t"] == [0.0, 0.0] and d["drop i2t"] == [None, None]  # nothing to lose: no drop
    assert d["unseen t2i R@5"] == [0.125, 0.25]


def test_llm_cc_is_compared_with_the_papers_rows_and_every_control_but_itself():
    rows = {"clip77": {"folder": "clip77"}, "minilm77": {"folder": "minilm77"}, "llm_nocc": {"folder": "llm_nocc"},
            "llm_cc": {"folder": "hardneg-400"}, "llm_cc:hardneg": {"folder": "hardneg-400"},
            "llm_cc:paper": {"folder": "paper-400"}}
    assert rs.comparisons(rows) == [("llm_cc", "clip77"), ("llm_cc", "minilm77"), ("llm_cc", "llm_nocc"),
                                    ("llm_nocc", "clip77"), ("llm_nocc", "minilm77"), ("llm_cc", "llm_cc:paper")]
    assert rs.comparisons({"clip77": {}}) == [] and rs.paired_tests({}, {"clip77": {}}) is None


def test_paired_tests_call_only_a_clear_difference_one_and_the_table_marks_it():
    rng = np.random.default_rng(0)
    n = 60

    def seed(p: float) -> dict:
        ranks = list(np.where(rng.random(n) < p, 0, 7))
        return _outcome(ranks, ranks)

    outcomes = {"llm_cc": [seed(0.9), seed(0.9)], "llm_nocc": [seed(0.1), seed(0.1)],
                "clip77": [seed(0.85), seed(0.85)]}
    rows = {name: {"folder": name} for name in outcomes}
    tests = rs.paired_tests(outcomes, rows)
    assert tests["family"] == 3 * len(METRICS)  # llm_cc-clip77, llm_cc-llm_nocc, llm_nocc-clip77
    big = tests["comparisons"]["llm_cc-llm_nocc"]["own long t2i R@1"]
    assert big["significant"] and big["difference"] > 0.6 and big["p_holm"] >= big["p"]
    same = tests["comparisons"]["llm_cc-llm_nocc"]["own long i2t R@1"]  # every rank 3 on both sides
    assert same["difference"] == 0 and not same["significant"]
    md = "\n".join(rs.tests_markdown(tests))
    assert f"Holm over all {tests['family']} tests" in md
    line = next(x for x in md.splitlines() if x.startswith("| llm_cc-llm_nocc |"))
    assert line.count("**") == 2 * sum(t["significant"] for t in tests["comparisons"]["llm_cc-llm_nocc"].values())
    assert rs.tests_markdown(None) == []


def test_the_styles_table_shows_mean_and_sd_over_seeds():
    styles = rs.drops([_outcome([0, 0, 5, 5], [0, 5, 5, 5]), _outcome([0, 0, 0, 5], [0, 5, 5, 5])])
    md = "\n".join(rs.styles_markdown({"llm_cc": {"styles": styles}, "clip77": {"styles": None}}))
    row = next(x for x in md.splitlines() if x.startswith("| llm_cc |"))
    # own 0.5 and 0.75, unseen 0.25 twice, drops 0.5 and 2/3; no own i2t hit: no i2t drop
    assert row.startswith("| llm_cc | 0.625 ± 0.177 | 0.250 ± 0.000 | 0.583 ± 0.118 |") and "| - |" in row
    assert "| clip77 |" not in md and rs.styles_markdown({"clip77": {}}) == []


class _CountingImages:
    dim = 4

    def __init__(self) -> None:
        self.seen = 0

    def encode(self, images):
        self.seen += len(images)
        return np.stack([np.full(4, float(np.asarray(im).mean())) for im in images])


def test_memo_images_embeds_each_distinct_image_once():
    from PIL import Image

    a, b = Image.new("RGB", (8, 8), (10, 20, 30)), Image.new("RGB", (8, 8), (200, 0, 0))
    enc = _CountingImages()
    memo = MemoImages(enc)
    first = memo.encode([a, b, a])
    assert enc.seen == 2 and np.array_equal(first[0], first[2]) and not np.array_equal(first[0], first[1])
    again = memo.encode([b, a.copy()])  # the same pixels in another object: no new encoding
    assert enc.seen == 2 and np.array_equal(again, first[[1, 0]])


def test_a_row_is_scored_on_both_styles_against_one_gallery(tiny_bundle, tmp_path):
    generate_scenes(tmp_path / "test", 10, "test", 5, progress=False)
    unseen = rs.unseen_corpus(tmp_path, tmp_path / "test", seed=7)
    assert unseen == tmp_path / "data" / "test-unseen" and rs.unseen_corpus(tmp_path, tmp_path / "test", 7) == unseen
    own_ds, unseen_ds = read_dataset(tmp_path / "test"), read_dataset(unseen)
    assert [it.id for it in own_ds] == [it.id for it in unseen_ds]
    assert all(a.long != b.long for a, b in zip(own_ds, unseen_ds, strict=True))
    scoring = RowScoring(tiny_bundle)
    out = rs.style_outcomes(scoring, tmp_path / "test", unseen)
    assert len(scoring._image._memo) == len(own_ds)  # one gallery for both styles
    plain = scoring.evaluate(tmp_path / "test")
    d = rs.drops([out])
    assert d["own t2i"] == [plain["t2i_r1"]] and d["own i2t"] == [plain["i2t_r1"]]
    assert out["unseen_eval"]["dataset"] == str(unseen) and d["unseen t2i"] == [out["unseen_eval"]["t2i_r1"]]
