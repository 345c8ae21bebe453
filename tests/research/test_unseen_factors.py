"""research.unseen_factors: own captions with one kind of word in the unseen grammar's, and a scored run."""

from __future__ import annotations

import json
import re

import pytest

from llm2clip.data import generate_scenes, read_dataset
from llm2clip.data.captions.unseen import twin_groups
from llm2clip.data.captions.unseen import vocabulary as V
from research import unseen_factors as uf

FIRST = {f"{f}:{v}": 0 for f, values in {
    "class": ["bag", "pullover"], "size": ["small", "medium", "large"],
    "orientation": ["upright", "upside down", "mirrored"], "cell": ["top-left", "middle-right", "bottom-center"],
    "texture": ["plain"]}.items() for v in values} | {"relation:(1, -1)": 0, "relation:(0, 1)": 1}


def test_each_factor_by_hand():
    text = ("In the top left cell is an upright large brown bag. A red pullover, medium-sized and turned upside down, "
            "is placed in the right column of the middle row. The red pullover lies below and to the left of the "
            "brown bag. Everything sits on a plain teal background.")
    assert uf.rewrite(text, ["class"], dict(FIRST)) == text.replace("bag", "handbag").replace("pullover", "jumper")
    assert uf.rewrite(text, ["size"], dict(FIRST)) == text.replace("large", "big").replace("medium-sized", "mid-sized")
    # an adjective before a word, a predicate before punctuation; "an" stays before "unflipped"
    assert uf.rewrite(text, ["orientation"], dict(FIRST)) == (
        text.replace("upright", "unflipped").replace("turned upside down", "inverted"))
    assert uf.rewrite(text, ["cell"], dict(FIRST)) == text.replace("top left cell", "upper-left corner").replace(
        "right column of the middle row", "middle of the right column")
    assert uf.rewrite(text, ["relation"], dict(FIRST)) == text.replace("below and to the left of", "down and left of")
    assert uf.rewrite(text, ["texture"], dict(FIRST)) == text.replace("a plain", "a solid")
    every = uf.rewrite(text, uf.FACTORS, dict(FIRST))
    assert every.startswith("In the upper-left corner is an unflipped big brown handbag. A red jumper, mid-sized and")
    assert every.endswith("lies down and left of the brown handbag. Everything sits on a solid teal background.")


def test_articles_follow_the_new_word_and_an_own_caption_keeps_its_own():
    assert uf.fix_articles("a oversized bag, an big coat. A inverted tee") == "an oversized bag, a big coat. An inverted tee"
    assert uf.fix_articles("a 3 x 3 grid, a-line") == "a 3 x 3 grid, a-line"


def test_the_empty_cells_sentence_names_the_cells_in_other_words():
    got = uf.rewrite("The top left and bottom center cells are empty.", ["cell"], dict(FIRST))
    assert got == "The upper-left corner and the middle of the bottom row are empty."


OWN_FORMS = {  # what must not be left of each factor's own wording
    "class": r"(?<![\w-])(t-shirts?|trousers|pullovers?|dress(es)?|coats?|sandals?|shirts?|sneakers?|bags?|ankle boots?)(?![\w-])",
    "size": r"\b(small|medium|large)\b",
    "orientation": r"\b(upright|upside|mirrored)\b",
    "cell": r"\b(top|middle|bottom) (left|center|right)\b(?!-hand)|row and (left|center|right) column|-(left|center|right) cell|of the picture",
    "relation": r"\b(directly|above|below|to the (left|right) of)\b",
    "texture": r"\b(plain|striped|dotted|checkered)\b",
}


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    root = tmp_path_factory.mktemp("factors")
    generate_scenes(root / "own", 16, "val", 3, progress=False)
    return root


def test_a_corpus_loses_every_own_word_of_the_factor_and_keeps_the_rest(own):
    ds = read_dataset(own / "own")
    assert all(uf.fix_articles(it.captions["long"]) == it.captions["long"] for it in ds)
    for factor, pattern in OWN_FORMS.items():
        items = uf.factor_items(ds.items, [factor], seed=0)
        for before, after in zip(ds, items, strict=True):
            assert not re.search(pattern, after.captions["long"], re.IGNORECASE), (factor, after.captions["long"])
            assert after.captions["short"] == before.captions["short"] and after.id == before.id
            assert after.meta["objects"] == before.meta["objects"]
            assert after.meta["caption_style"] == f"own+{factor}"
        others = [p for f, p in OWN_FORMS.items() if f != factor and f not in ("cell", "relation")]
        # a factor leaves the others' words alone (cells and relations share "left" and "top")
        assert all(len(re.findall(p, a.captions["long"], re.I)) == len(re.findall(p, b.captions["long"], re.I))
                   for p in others for a, b in zip(items, ds, strict=True))


def _class_words(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for cls, words in V.CLASS_WORDS.items():
        for singular, plural in words:
            if re.search(rf"(?<![\w-])({re.escape(singular)}|{re.escape(plural)})(?![\w-])", text):
                found.setdefault(cls, set()).add(singular)
    return found


def test_twins_share_their_word_choices_and_seeds_change_them(own):
    ds = read_dataset(own / "own")
    items = uf.factor_items(ds.items, ["class"], seed=0)
    groups = [g for g in twin_groups(ds.items) if len(g) > 1]
    assert groups
    for g in groups:
        words = [_class_words(items[i].captions["long"]) for i in g]
        for cls in set(words[0]) & set(words[1]):
            assert words[0][cls] == words[1][cls], (cls, words)
    again = uf.factor_items(ds.items, ["class"], seed=0)
    assert [it.captions for it in again] == [it.captions for it in items]
    other = uf.factor_items(ds.items, ["class"], seed=1)
    assert [it.captions for it in other] != [it.captions for it in items]


def test_refuses_an_unknown_factor(own):
    with pytest.raises(SystemExit, match="unknown factor"):
        uf.factor_items(read_dataset(own / "own").items, ["colour"], seed=0)
    with pytest.raises(SystemExit):
        uf.main(["--data", str(own / "own"), "--out", str(own / "x"), "--variants", "class,colour"])


def test_scores_each_variant_with_a_real_bundle(own, tiny_bundle, tmp_path, capsys):
    out = tmp_path / "v"
    uf.main(["--data", str(own / "own"), "--out", str(out), "--variants", "class,words", "--model", str(tiny_bundle),
             "--threads", "1", "--json", str(tmp_path / "r.json")])
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert set(rows) == {"class", "words"}
    src, dst = own / "own" / "images", out / "words" / "images"
    assert sorted(p.read_bytes() for p in src.iterdir()) == sorted(p.read_bytes() for p in dst.iterdir())
    for row in rows.values():
        assert row["n"] == 16 and 0 <= row["t2i_r1"]["unseen"] <= 1
    printed = capsys.readouterr().out
    assert re.search(r"^words\s+\d\.\d{3}", printed, re.M) and re.search(r"^own\s+\d\.\d{3}", printed, re.M)
