"""The sentences of a long caption, one builder per kind; ``long.py`` orders and counts them.

Each builder that takes ``rng`` draws from it in a fixed order: that order is part of the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llm2clip.data.captions import templates as T
from llm2clip.data.captions.wording import NUMBERS, an, cap, join, noun, pick, with_article
from llm2clip.data.scene_graph import CELLS, COLS, ROWS, SceneGraph, SceneObject, relation


@dataclass(frozen=True)
class StatedRelation:
    """A relation as a caption states it: "<subject> is <relation> <object>" (object indices); its JSON is ``asdict``."""

    subject: int
    object: int
    relation: str


@dataclass(frozen=True)
class Segment:
    text: str
    refs: frozenset[int]  # objects the sentence depends on
    relation: StatedRelation | None = None
    fixed: bool = False  # object descriptions and the opening keep their order


@dataclass(frozen=True)
class Opening:
    first: str | None  # the sentence the caption opens with; None: the count comes at the end
    background: str | None  # the background sentence, placed among the others; None: the opening says it


def draw_opening(graph: SceneGraph, rng: np.random.Generator) -> Opening:
    """How the caption introduces the count and the background."""
    n = len(graph.objects)
    bg = graph.background
    words = {
        "number": NUMBERS[n],
        "Number": cap(NUMBERS[n]),
        "colour": bg.colour,
        "a_colour": an(bg.colour),
        "texture": bg.texture,
        "things": "item" if n == 1 else "items",
    }
    words["background"] = pick(rng, T.BACKGROUND_PHRASES).format(**words)
    alone = pick(rng, T.INTRO_ONE if n == 1 else T.INTRO_MANY).format(**words)
    with_background = pick(rng, T.INTRO_ONE_ON if n == 1 else T.INTRO_MANY_ON).format(**words)
    background = pick(rng, T.BACKGROUND_SENTENCES).format(**words)
    # most captions open with the count; the others state it somewhere later
    opening = rng.random() < 0.7
    combined = opening and bool(rng.integers(2))
    if not opening:
        return Opening(None, background)
    return Opening(with_background, None) if combined else Opening(alone, background)


def closing_sentence(n: int, rng: np.random.Generator) -> str:
    """The count, for a caption that did not open with it."""
    return pick(rng, T.CLOSING_ONE if n == 1 else T.CLOSING_MANY).format(number=NUMBERS[n])


def object_sentence(obj: SceneObject, rng: np.random.Generator) -> str:
    """Every attribute of one object: class, colour, size, orientation and cell."""
    size = pick(rng, T.SIZE_WORDS[obj.size])
    cell = pick(rng, T.CELL_PHRASES).format(row=obj.row, col=obj.col)
    adj = T.ORIENTATION_ADJECTIVES[obj.orientation]
    template = pick(rng, T.OBJECT_TEMPLATES)
    text = template.format(
        A_size=cap(with_article(size)),
        a_size=with_article(size),
        A_colour=cap(with_article(obj.colour)),
        a_adj=with_article(adj),
        adj=adj,
        size=size,
        colour=obj.colour,
        noun=noun(obj.category),
        cell=cell,
        Cell=cap(cell),
        orient=pick(rng, T.ORIENTATION_PREDICATES[obj.orientation]),
    )
    return cap(text)


def referring(obj: SceneObject, distractors: Sequence[SceneObject], start: int) -> str:
    """A short description of ``obj`` that fits none of ``distractors`` ("the small red sneaker").

    ``start`` skips the shortest forms, so that some captions say more than they must."""
    for keys in T.REFERRING_KEYS[start:]:
        if not any(all(d.attribute(key) == obj.attribute(key) for key in keys) for d in distractors):
            words = ["the"]
            if "orientation" in keys:
                words.append(T.ORIENTATION_ADJECTIVES[obj.orientation])
            if "size" in keys:
                words.append(obj.size)
            words += [obj.colour, noun(obj.category)]
            return " ".join(words)
    # same look, different cell: the cell is the only thing that tells them apart
    return f"the {obj.colour} {noun(obj.category)} in the {obj.row} {obj.col} cell"


def edge_phrase(obj: SceneObject) -> str:
    """Where an object sits on the canvas: a corner, an edge or the centre."""
    row, col = obj.row, obj.col
    if row != "middle" and col != "center":
        return f"in the {row} {col} corner of the picture"
    if row == "middle" and col == "center":
        return "at the very center of the picture"
    if row == "middle":
        return f"along the {col} edge of the picture, halfway down"
    return f"along the {row} edge of the picture, in the center"


def edge_segment(i: int, objects: Sequence[SceneObject], refs: Sequence[str]) -> Segment:
    return Segment(f"{cap(refs[i])} is {edge_phrase(objects[i])}.", frozenset((i,)))


def relation_segment(
    pair: tuple[int, int], objects: Sequence[SceneObject], refs: Sequence[str], rng: np.random.Generator
) -> Segment:
    """Where object ``a`` lies relative to object ``b``, each named by its referring expression."""
    a, b = pair
    template = pick(rng, T.RELATION_TEMPLATES)
    rel = relation(objects[a], objects[b])
    inv = relation(objects[b], objects[a])
    text = template.format(A=cap(refs[a]), a=refs[a], B=cap(refs[b]), b=refs[b], rel=rel, inv=inv)
    # the sentence states "subject <relation> object"; the inverse template swaps them
    subject, other, said = (b, a, inv) if "{B}" in template else (a, b, rel)
    return Segment(text, frozenset((a, b)), StatedRelation(subject, other, said))


def empty_cells_sentence(objects: Sequence[SceneObject]) -> str:
    taken = {o.cell for o in objects}
    empty = [f"{ROWS[c // len(COLS)]} {COLS[c % len(COLS)]}" for c in range(CELLS) if c not in taken]
    return f"The {join(empty)} cells are empty."
