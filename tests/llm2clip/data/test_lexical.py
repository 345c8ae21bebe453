"""Captions in other words: WordNet synonyms swapped in without changing a fact, and the committed lexicon."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from llm2clip.data import generate_scenes
from llm2clip.data.captions.lexical import LEXICON, relexicalise
from research.wordnet_lexicon import CLASS_WORDS, SENSES, WordNet, build, main

FORMS: dict[str, list[str]] = json.loads(LEXICON.read_text())["forms"]
# each surface form, own or other, back to the own grammar's word it stands for
CANONICAL = {**{f: f for f in FORMS}, **{o: own for own, others in FORMS.items() for o in others}}
_ALIASES = {"medium": "medium-sized", "upside-down": "upside down", "trousers": "pair of trousers"}


def canonical(text: str) -> str:
    """``text`` with every lexicon form written as its own word, articles as "a": equal for equal facts."""
    forms = sorted(CANONICAL, key=len, reverse=True)
    pattern = re.compile(rf"(?<![\w-])({'|'.join(map(re.escape, forms))})(?![\w-])", re.IGNORECASE)
    text = pattern.sub(lambda m: CANONICAL[m.group(1).lower()], text)
    text = re.sub(r"(?<![\w-])(medium|upside-down)(?![\w-])", lambda m: _ALIASES[m.group(1)], text)
    return re.sub(r"\b(a|an|A|An)\b", "a", text).lower()


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> list[str]:
    data = generate_scenes(tmp_path_factory.mktemp("scenes") / "train", 40, "train", seed=3, progress=False)
    return [item.captions["long"] for item in data] + [item.captions["short"] for item in data]


def test_swaps_change_words_and_keep_every_fact(captions):
    rng = np.random.default_rng(0)
    swapped = [relexicalise(c, rng, p=1.0) for c in captions]
    assert sum(s != c for s, c in zip(swapped, captions, strict=True)) >= 0.9 * len(captions)
    for own, new in zip(captions, swapped, strict=True):
        assert canonical(new) == canonical(own), (own, new)
        # colours, cells and relations are never touched
        for fixed in ("red", "blue", "left", "right", "above", "below", "cell", "row", "column", "center"):
            assert len(re.findall(rf"\b{fixed}\b", own)) == len(re.findall(rf"\b{fixed}\b", new))


def test_no_swap_at_p_zero_and_half_of_them_at_one_half(captions):
    assert [relexicalise(c, np.random.default_rng(1), p=0.0) for c in captions] == captions
    pattern = re.compile(rf"(?<![\w-])({'|'.join(map(re.escape, sorted(FORMS, key=len, reverse=True)))})(?![\w-])",
                         re.IGNORECASE)
    total = sum(len(pattern.findall(c)) for c in captions)
    rng = np.random.default_rng(2)
    kept = sum(len(pattern.findall(relexicalise(c, rng, p=0.5))) for c in captions)
    assert 0.35 * total < kept < 0.65 * total


def test_whole_words_articles_and_capitals():
    rng = np.random.default_rng(0)
    assert relexicalise("A t-shirt, a shirt and two t-shirts.", rng, 1.0) == "A jersey, a shirt and two jerseys."
    out = relexicalise("An upright bag. Upright, it is upside-down.", rng, 1.0)
    first = out.split(".")[0].split()
    assert first[0] == ("An" if first[1][0] in "aeiou" else "A") and first[1] in ("erect", "vertical")
    assert first[2] in ("handbag", "pocketbook", "purse")
    assert out.split(". ")[1].split(",")[0] in ("Erect", "Vertical") and "inverted" in out
    assert relexicalise("The bagpipe and a sandbag.", rng, 1.0) == "The bagpipe and a sandbag."


def test_no_other_word_names_another_class():
    nouns = {w.split()[-1] for w in CLASS_WORDS} | {w.split()[-1] + "s" for w in CLASS_WORDS}
    for own, others in FORMS.items():
        own_nouns = set(re.split(r"[ -]", own))
        for other in others:
            assert not (set(re.split(r"[ -]", other)) & nouns) - own_nouns, (own, other)


WORDNET = Path("/usr/share/wordnet")


def test_committed_lexicon_is_what_wordnet_gives(tmp_path, capsys):
    built = build(WordNet(WORDNET))
    assert built == json.loads(LEXICON.read_text())
    assert built["synonyms"]["bag"] == ["handbag", "pocketbook", "purse"]
    assert set(built["synonyms"]) == set(SENSES)
    assert main(["--wordnet", str(WORDNET), "--out", str(tmp_path / "lex.json")]) == 0
    assert json.loads((tmp_path / "lex.json").read_text()) == built


def test_missing_wordnet_says_what_to_install(tmp_path, capsys):
    assert main(["--wordnet", str(tmp_path), "--out", str(tmp_path / "lex.json")]) == 2
    assert "wordnet-base" in capsys.readouterr().err


def test_scenes_with_other_words_keep_everything_else(tmp_path, capsys):
    from llm2clip.data import read_dataset
    from llm2clip.data.generator import SceneCaptions
    from llm2clip.errors import DatasetError
    from llm2clip_cli.main import main as cli

    plain = generate_scenes(tmp_path / "plain", 8, "train", seed=4, progress=False)
    assert cli(["data", "scenes", "--out", str(tmp_path / "w"), "--n", "8", "--split", "train", "--seed", "4",
                "--other-words", "2"]) == 0
    other = read_dataset(tmp_path / "w")
    again = generate_scenes(tmp_path / "again", 8, "train", seed=4, progress=False,
                            captions=SceneCaptions(other_words=2))
    for a, b, c in zip(plain, other, again, strict=True):
        assert set(b.captions) == {"long", "short", "long_w1", "long_w2"}
        assert {k: b.captions[k] for k in ("long", "short")} == a.captions and b.meta == a.meta
        assert (tmp_path / "w" / b.image).read_bytes() == (tmp_path / "plain" / a.image).read_bytes()
        assert b.captions == c.captions  # same arguments, same captions
        assert canonical(b.captions["long_w1"]) == canonical(a.captions["long"])
    assert sum(b.captions["long_w1"] != b.captions["long"] for b in other) >= 6
    assert any(b.captions["long_w1"] != b.captions["long_w2"] for b in other)
    with pytest.raises(DatasetError, match="with the own style"):
        SceneCaptions("unseen", other_words=1)
    with pytest.raises(DatasetError, match="non-negative"):
        generate_scenes(tmp_path / "u", 4, "val", seed=4, progress=False, captions=SceneCaptions(other_words=-1))
