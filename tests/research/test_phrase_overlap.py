"""research.phrase_overlap: the n-gram shares it reports, and a run on a corpus and its restyling."""

from __future__ import annotations

import json

import pytest

from research import phrase_overlap


def test_shares_of_distinct_ngrams_and_of_their_occurrences():
    held_out = ["a red bag a red bag", "a blue coat"]
    got = phrase_overlap.overlap(held_out, {"same": held_out, "some": ["the red bag"], "none": ["x y z"]}, 2)
    assert got["same"] == {"distinct": 1.0, "occurrences": 1.0}
    # distinct bigrams: a red, red bag, bag a, a blue, blue coat; occurrences 7, of which "red bag" twice
    assert got["some"] == {"distinct": 0.2, "occurrences": round(2 / 7, 4)}
    assert got["none"] == {"distinct": 0.0, "occurrences": 0.0}


def test_the_training_grammars_hold_little_of_the_unseen_one(tmp_path):
    from llm2clip.data import generate_scenes

    generate_scenes(tmp_path / "own", 12, "val", 1, progress=False)
    generate_scenes(tmp_path / "unseen", 12, "val", 1, progress=False, captions="unseen")
    phrase_overlap.main(["--own", str(tmp_path / "own"), "--unseen", str(tmp_path / "unseen"), "--n", "4",
                         "--json", str(tmp_path / "o.json")])
    got = json.loads((tmp_path / "o.json").read_text())["4-grams"]
    assert set(got) == {"long", "long_w1", "long_a1"}
    assert all(0.0 <= v["distinct"] < 0.5 and 0.0 <= v["occurrences"] < 0.5 for v in got.values())
    generate_scenes(tmp_path / "other", 12, "val", 2, progress=False, captions="unseen")
    with pytest.raises(SystemExit, match="does not hold the scenes"):
        phrase_overlap.main(["--own", str(tmp_path / "own"), "--unseen", str(tmp_path / "other")])
