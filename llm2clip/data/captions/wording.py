"""Words shared by the long and the short captions: nouns, numbers, articles, lists."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NOUNS: dict[str, tuple[str, str]] = {  # class: (singular, plural)
    "t-shirt": ("t-shirt", "t-shirts"), "trouser": ("pair of trousers", "pairs of trousers"),
    "pullover": ("pullover", "pullovers"), "dress": ("dress", "dresses"), "coat": ("coat", "coats"),
    "sandal": ("sandal", "sandals"), "shirt": ("shirt", "shirts"), "sneaker": ("sneaker", "sneakers"),
    "bag": ("bag", "bags"), "ankle boot": ("ankle boot", "ankle boots"),
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")


def an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{an(phrase)} {phrase}"


def cap(text: str) -> str:
    """``text`` with its first letter in upper case."""
    return text[0].upper() + text[1:]


def join(parts: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options``, uniformly: one draw from ``rng``."""
    return options[int(rng.integers(len(options)))]


def noun(category: str, plural: bool = False) -> str:
    return NOUNS[category][1 if plural else 0]
