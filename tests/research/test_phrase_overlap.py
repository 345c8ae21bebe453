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


def test_new_words_are_the_held_out_words_the_own_captions_never_use():
    got = phrase_overlap.new_words(["a red tote and a blue tote", "a jumper"], ["a red bag", "a blue coat"],
                                   {"alt": ["one tote"], "none": ["a red bag"]})
    # the new words, in order: tote, and, tote, jumper; "alt" holds tote (1 of 3 distinct, 2 of 4 occurrences)
    assert got["alt"] == {"distinct": round(1 / 3, 4), "occurrences": 0.5}
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
    # the alt grammar was scrubbed of the unseen grammar's idioms and synonyms (its first version held 9% of the
    # unseen 4-gram occurrences and 46% of the unseen-only words); keep it apart
    assert got["long_a1"]["occurrences"] < 0.03, got
    fresh = json.loads((tmp_path / "o.json").read_text())["new-words"]
    assert fresh["long"] == {"distinct": 0.0, "occurrences": 0.0}
    assert 0.0 < fresh["long_a1"]["occurrences"] < 0.2, fresh
    generate_scenes(tmp_path / "other", 12, "val", 2, progress=False, captions="unseen")
    with pytest.raises(SystemExit, match="does not hold the scenes"):
        phrase_overlap.main(["--own", str(tmp_path / "own"), "--unseen", str(tmp_path / "other")])
