"""The alt grammar's words and sentences: one builder per kind of fact, each drawing its construction.

Written apart from the own grammar (``captions.templates``): squares instead of cells, comparisons instead of
"directly above", a field instead of "the background is", and no sentence of the own grammar. Every
builder draws from ``rng`` in a fixed order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from llm2clip.data.captions.wording import an, cap, join, pick
from llm2clip.data.scene_graph import COLS, ROWS, Background, SceneObject

NOUNS: dict[str, tuple[str, ...]] = {  # class: singular forms, the first the own grammar's word
    "t-shirt": ("t-shirt", "casual top"), "trouser": ("pair of trousers", "pair of jeans"),
    "pullover": ("pullover", "sweatshirt"), "dress": ("dress", "one-piece"), "coat": ("coat",),
    "sandal": ("sandal",), "shirt": ("shirt",), "sneaker": ("sneaker", "plimsoll"),
    "bag": ("bag", "satchel", "clutch"), "ankle boot": ("ankle boot", "chelsea boot"),
}
SIZE_WORDS = {
    "small": ("small", "undersized"), "medium": ("medium-sized", "moderately sized"), "large": ("large", "sizeable"),
}
ORIENTATION_PREDICATES = {
    "upright": ("upright", "not flipped", "in its usual pose"),
    "upside down": ("upside down", "vertically flipped", "turned bottom-up"),
    "mirrored": ("mirrored", "horizontally flipped", "flipped sideways"),
}
ORIENTATION_ADJECTIVES = {
    "upright": ("upright", "non-flipped"), "upside down": ("upside-down", "vertically-flipped"),
    "mirrored": ("mirrored", "mirror-image"),
}
ROW_WORDS = {"top": ("top", "uppermost"), "middle": ("middle",), "bottom": ("bottom", "lowest")}
SQUARE_ROWS = {"top": "top", "middle": "middle", "bottom": "bottom"}  # "the top-left square"
COL_WORDS = {"left": ("left",), "center": ("middle",), "right": ("right",)}
ORDINALS = ("one", "two", "three")
# "the top-left square", "the left end of the uppermost row", "square one from the left in the top row"
CELL_STYLES = 3
TEXTURE_ADJECTIVES = {
    "plain": ("plain", "patternless"), "striped": ("striped", "stripe-patterned"), "dotted": ("dotted", "speckled"),
    "checkered": ("checkered", "chessboard-patterned"),
}
TEXTURE_WITH = {
    "plain": "without any pattern", "striped": "with horizontal stripes", "dotted": "with a grid of dots",
    "checkered": "with a chessboard pattern",
}
TEXTURE_HAS = {
    "plain": "has no pattern", "striped": "has horizontal stripes", "dotted": "is covered in a grid of dots",
    "checkered": "is laid out like a chessboard",
}
TEXTURE_DETAIL = {
    "plain": "No pattern breaks up the {c} of the field.",
    "striped": "The field's stripes run horizontally, {c} alternating with a darker {c}.",
    "dotted": "Darker {c} dots are spread regularly over the field.",
    "checkered": "The field's chessboard pattern alternates {c} squares with darker {c} ones.",
}
GRID_SENTENCES = (
    "The canvas is split into nine squares, three by three.",
    "The picture forms nine squares in three rows of three.",
)
_T = TypeVar("_T")


def choose(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    """One of ``options`` (sentence builders too), uniformly: one draw from ``rng``."""
    return options[int(rng.integers(len(options)))]


ALONE_SENTENCES = ("Other than that, the picture is empty.", "No second object appears anywhere.")


def cell_name(row: str, col: str, style: int, rng: np.random.Generator) -> tuple[str, str]:
    """A square of the grid as a noun phrase, and the preposition that places a thing in it."""
    c = COLS.index(col)
    if style == 0:
        if (row, col) == ("middle", "center"):
            return pick(rng, ("the central square", "the innermost square")), "in"
        return f"the {SQUARE_ROWS[row]}-{pick(rng, COL_WORDS[col])} square", "in"
    if style == 1:
        if (row, col) == ("middle", "center"):
            return "the heart of the grid", "at"
        part = ("the left end", "the midpoint", "the right end")[c]
        return f"{part} of the {pick(rng, ROW_WORDS[row])} row", "at"
    return f"square {ORDINALS[c]} from the left in the {pick(rng, ROW_WORDS[row])} row", "in"


class ObjectWords:
    """Every word one description of an object needs, drawn once."""

    def __init__(self, obj: SceneObject, style: int, rng: np.random.Generator) -> None:
        self.colour = obj.colour
        self.size_base = obj.size
        self.size = pick(rng, SIZE_WORDS[obj.size])
        self.noun = pick(rng, NOUNS[obj.category])
        self.pred = pick(rng, ORIENTATION_PREDICATES[obj.orientation])
        self.adj = pick(rng, ORIENTATION_ADJECTIVES[obj.orientation])
        self.place, self.prep = cell_name(obj.row, obj.col, style, rng)

    @property
    def loc(self) -> str:
        return f"{self.prep} {self.place}"

    @property
    def np(self) -> str:
        """"a small red sneaker"."""
        return f"{an(self.size)} {self.size} {self.colour} {self.noun}"


# one object per sentence; the own grammar's "sits", "there is", "you can see" and "is placed" are not used
OBJECT_SENTENCES: tuple[Callable[[ObjectWords], str], ...] = (
    lambda w: f"{cap(w.place)} holds {w.np}, {w.pred}.",
    lambda w: f"{cap(w.loc)}, {w.np} is depicted {w.pred}.",
    lambda w: f"The {w.noun} {w.loc} is {w.colour}, {w.size} and {w.pred}.",
    lambda w: f"{cap(an(w.colour))} {w.colour} {w.noun} of {w.size_base} proportions, {w.pred}, fills {w.place}.",
    lambda w: f"Located {w.loc} is {an(w.size)} {w.size} {w.adj} {w.colour} {w.noun}.",
    lambda w: f"{cap(w.np)} fills {w.place} and is {w.pred}.",
    lambda w: f"{cap(w.place)} contains {w.np} that appears {w.pred}.",
)
# two objects in one sentence
PAIR_SENTENCES: tuple[Callable[[ObjectWords, ObjectWords], str], ...] = (
    lambda v, w: f"{cap(v.place)} holds {v.np}, {v.pred}, while {w.place} holds {w.np}, {w.pred}.",
    lambda v, w: f"{cap(v.np)} ({v.pred}) is {v.loc}, and {w.np} ({w.pred}) is {w.loc}.",
)
# every object in one sentence, in the order its header names
LIST_HEADERS = {
    "rows": "Reading the rows downward",
    "columns": "Reading the columns rightward",
    "size": "From the largest down",
    "listed": "In turn",
    "shuffled": "In no particular order",
}


def object_sentences(
    objects: Sequence[SceneObject], style: int, grouping: str, rng: np.random.Generator
) -> list[str]:
    """The descriptions of ``objects`` (in caption order): one a sentence ("single") or two ("pairs")."""
    words = [ObjectWords(o, style, rng) for o in objects]
    if grouping == "pairs":
        out = []
        for j in range(0, len(words) - 1, 2):
            out.append(choose(rng, PAIR_SENTENCES)(words[j], words[j + 1]))
        if len(words) % 2:
            out.append(choose(rng, OBJECT_SENTENCES)(words[-1]))
        return out
    return [choose(rng, OBJECT_SENTENCES)(w) for w in words]


def list_sentence(objects: Sequence[SceneObject], style: int, header: str, rng: np.random.Generator) -> str:
    words = [ObjectWords(o, style, rng) for o in objects]
    items = [f"{w.place}, {w.np} ({w.pred})" for w in words]
    return f"{header}: {'; '.join(items)}."


# -- the count and the background


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


def number(n: int, rng: np.random.Generator) -> str:
    """``n`` in words or, now and then, in digits."""
    return str(n) if rng.random() < 0.3 else NUMBER_WORDS[n]


def count_sentence(n: int, at_end: bool, rng: np.random.Generator) -> str:
    if n == 1:
        options = (
            ("That single object is all the picture contains.", "Hence the picture contains just one object.")
            if at_end
            else ("The scene has a single object in it.", "I see only one object.",
                  "One fashion item makes up this scene.", "This picture contains only one object.")
        )
        return pick(rng, options)
    k = number(n, rng)
    if at_end:
        return pick(rng, (f"That makes {k} objects overall.", f"Hence the picture contains {k} objects."))
    template = pick(rng, ("The scene has {k} objects in it.", "I see {k} objects overall.",
                          "{K} fashion items make up this scene.", "This picture contains {k} objects."))
    # a sentence does not open with a digit
    return template.format(k=k, K=cap(NUMBER_WORDS[n]))


def backdrop(bg: Background, rng: np.random.Generator) -> str:
    """"striped blue field" or "blue field with horizontal stripes"."""
    if rng.integers(2):
        return f"{pick(rng, TEXTURE_ADJECTIVES[bg.texture])} {bg.colour} field"
    return f"{bg.colour} field {TEXTURE_WITH[bg.texture]}"


def background_sentence(bg: Background, n: int, at_end: bool, rng: np.random.Generator) -> str:
    """The background's colour and texture; "Beneath all of this is ..." only after the objects."""
    things = "object stands" if n == 1 else "objects stand"
    options = [
        lambda: f"The {bg.colour} background {TEXTURE_HAS[bg.texture]}.",
        lambda: f"Regarding the background, it is {pick(rng, TEXTURE_ADJECTIVES[bg.texture])} and {bg.colour}.",
        lambda: f"The {things} against {with_a(backdrop(bg, rng))}.",
    ]
    if at_end:
        options.append(lambda: f"Beneath all of this is {with_a(backdrop(bg, rng))}.")
    return options[int(rng.integers(len(options)))]()


def count_with_background(bg: Background, n: int, rng: np.random.Generator) -> str:
    """The opening that states count and background at once."""
    place = with_a(backdrop(bg, rng))
    if n == 1:
        return pick(rng, (f"On {place} sits a single object.", f"Against {place}, the scene has one object."))
    k = number(n, rng)
    return pick(rng, (f"On {place} sit {k} objects.", f"Against {place}, the scene has {k} objects."))


def with_a(phrase: str) -> str:
    return f"{an(phrase)} {phrase}"


def texture_detail(bg: Background) -> str:
    return TEXTURE_DETAIL[bg.texture].format(c=bg.colour)


def empty_sentence(objects: Sequence[SceneObject], style: int, rng: np.random.Generator) -> str:
    """The squares no object occupies."""
    taken = {o.cell for o in objects}
    names = [cell_name(ROWS[c // 3], COLS[c % 3], style, rng)[0] for c in range(9) if c not in taken]
    if rng.integers(2):
        return f"No object appears in {join(names)}."
    return f"{cap(join(names))} {'is' if len(names) == 1 else 'are'} empty."
