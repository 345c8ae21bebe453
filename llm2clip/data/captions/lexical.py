"""Captions in other words: a caption's attribute words swapped for their WordNet synonyms.

``lexicon.json`` (beside this file, built by ``python -m research.wordnet_lexicon``) maps each way the own grammar
writes a class, size, orientation or texture ("bag", "bags", "upside-down", "medium") to other words for it
("purse", "purses", "inverted", "moderate-sized"). ``relexicalise`` swaps each occurrence with a probability,
fixing the article before it ("an upright bag" -> "a vertical purse") and keeping a capital letter. Colours,
cells and relations are never touched, so the caption states the same facts in other words.

Used for training captions only (caption keys ``long_w1``.. of ``llm2clip data scenes --other-words``); the
evaluation's unseen grammar (``llm2clip.data.captions.unseen``) was written apart from it and is not read here.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np

LEXICON = Path(__file__).with_name("lexicon.json")


@functools.cache
def _lexicon() -> tuple[re.Pattern[str], dict[str, list[str]]]:
    forms: dict[str, list[str]] = json.loads(LEXICON.read_text())["forms"]
    alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    # a whole word or phrase: no letter or hyphen on either side ("shirt" is not found inside "t-shirt")
    pattern = re.compile(rf"(?<![\w-])(?:(?P<article>[Aa]n?) )?(?P<word>{alternatives})(?![\w-])", re.IGNORECASE)
    return pattern, {k.lower(): v for k, v in forms.items()}


def relexicalise(text: str, rng: np.random.Generator, p: float = 0.5) -> str:
    """``text`` with each lexicon word swapped, with probability ``p``, for one of its other words (uniformly)."""
    pattern, forms = _lexicon()

    def swap(m: re.Match[str]) -> str:
        word, article = m.group("word"), m.group("article")
        options = forms[word.lower()]
        if rng.random() >= p:
            return m.group(0)
        new = options[int(rng.integers(len(options)))]
        if word[0].isupper():
            new = new[0].upper() + new[1:]
        if article is None:
            return new
        fixed = "an" if new[0].lower() in "aeiou" else "a"
        return f"{fixed.capitalize() if article[0].isupper() else fixed} {new}"

    return pattern.sub(swap, text)
