"""research.synonym_probe: the minimal pairs it writes, what counts as known, and a run through a real bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm2clip.data import generate_scenes
from llm2clip.data.captions.unseen import vocabulary as V
from research import synonym_probe as sp


def test_swap_class_replaces_every_form_and_fixes_articles():
    text = "A bag sits left. Two bags: the red bag and a handbag. The Bag is big."
    assert sp.swap_class(text, "bag", ("overcoat", "overcoats")) == (
        "An overcoat sits left. Two overcoats: the red overcoat and a handbag. The Overcoat is big.")
    # "shirt" is not found inside "t-shirt"
    assert sp.swap_class("a t-shirt and a shirt", "shirt", ("tee", "tees")) == "a t-shirt and a tee"


def test_minimal_pairs_hold_the_original_three_synonyms_and_nine_wrong_classes():
    texts, cases = sp.minimal_pairs([("A red coat sits in the top left cell.", "coat")])
    assert len(texts) == 13 and texts[0] == "A red coat sits in the top left cell."
    (case,) = cases
    assert case["synonyms"] == [s for s, _ in V.CLASS_WORDS["coat"]]
    assert [texts[r] for r in case["synonym_rows"]] == [f"A red {s} sits in the top left cell." for s in case["synonyms"]]
    wrong = [texts[r] for r in case["wrong_rows"]]
    assert len(wrong) == 9 and "An red" not in " ".join(wrong) and "A red bag sits in the top left cell." in wrong


def test_a_synonym_is_known_only_when_it_beats_every_wrong_class():
    _, cases = sp.minimal_pairs([("a bag", "bag")])
    emb = np.zeros((13, 3))
    emb[0] = [1, 0, 0]
    emb[1:4] = [[1, 0.1, 0], [1, 0.5, 0], [0, 1, 0]]  # two synonyms near the original, one far
    emb[4:] = [1, 0.3, 0]  # every wrong class in between
    got = sp.known(emb, cases)
    assert got["n"] == 3 and got["known"] == pytest.approx(1 / 3)
    assert got["by_word"] == {"handbag": 1.0, "purse": 0.0, "tote": 0.0} and got["by_class"] == {"bag": 0.333}


def test_runs_through_a_real_bundle_and_refuses_bad_input(tmp_path, tiny_bundle, capsys):
    generate_scenes(tmp_path / "val", 6, "val", 4, progress=False)
    sp.main(["--data", str(tmp_path / "val"), "--bundle", f"tiny={tiny_bundle}", "--n", "4",
             "--json", str(tmp_path / "r.json")])
    got = json.loads((tmp_path / "r.json").read_text())
    assert got == json.loads(capsys.readouterr().out)
    assert got["captions"] == 4 and got["texts"] == 52
    assert got["encoders"]["tiny"]["n"] == 12 and 0 <= got["encoders"]["tiny"]["known"] <= 1
    for bad in (["--bundle", "tiny"], ["--bundle", f"x={tmp_path / 'none'}"], [], ["--n", "0", "--bundle", f"t={tiny_bundle}"]):
        with pytest.raises(SystemExit):
            sp.main(["--data", str(tmp_path / "val"), *bad])
