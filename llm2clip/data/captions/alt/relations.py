"""Where one object lies relative to another, in the alt grammar: comparisons ("nearer the top and nearer the
left than"), "has ... above it" and "seen from".

An object is named by the fewest attributes that tell it from the others, class alone first ("the bag"), then
colour, then size; two look-alikes are told apart by their square.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm2clip.data.captions.alt.phrasing import NOUNS, SIZE_WORDS, cell_name
from llm2clip.data.captions.wording import cap, pick
from llm2clip.data.scene_graph import COLS, ROWS, SceneObject

_KEYS = (("class",), ("colour", "class"), ("size", "colour", "class"))


def name(objects: Sequence[SceneObject], i: int, style: int, rng: np.random.Generator) -> str:
    """A definite description of object ``i`` that fits none of the others ("the red sneaker")."""
    obj = objects[i]
    others = [o for j, o in enumerate(objects) if j != i]
    noun = pick(rng, NOUNS[obj.category])
    for keys in _KEYS:
        if not any(all(o.attribute(k) == obj.attribute(k) for k in keys) for o in others):
            words = ["the"]
            if "size" in keys:
                words.append(pick(rng, SIZE_WORDS[obj.size]))
            if "colour" in keys:
                words.append(obj.colour)
            return " ".join([*words, noun])
    place, prep = cell_name(obj.row, obj.col, style, rng)
    return f"the {obj.colour} {noun} {prep} {place}"


def direction(a: SceneObject, b: SceneObject) -> tuple[int, int]:
    """(rows, columns) from ``b`` to ``a``, each -1, 0 or 1: (-1, 0) is straight above."""
    dv = ROWS.index(a.row) - ROWS.index(b.row)
    dh = COLS.index(a.col) - COLS.index(b.col)
    return int(np.sign(dv)), int(np.sign(dh))


def _compare(a: str, b: str, v: int, h: int) -> str:
    vert = {-1: "nearer the top", 1: "nearer the bottom"}.get(v)
    horiz = {-1: "nearer the left", 1: "nearer the right"}.get(h)
    if vert and horiz:
        return f"{cap(a)} is {vert} and {horiz} than {b}."
    if vert:
        return f"{cap(a)} is in the same column as {b}, {vert}."
    return f"{cap(a)} is in the same row as {b}, {horiz}."


def _has(a: str, b: str, v: int, h: int) -> str:
    vert = {-1: "above", 1: "below"}.get(v)
    horiz = {-1: "left", 1: "right"}.get(h)
    if vert and horiz:
        return f"{cap(b)} has {a} {vert} it and to its {horiz}."
    if vert:
        return f"{cap(b)} has {a} {vert} it in the same column."
    return f"{cap(b)} has {a} to its {horiz} in the same row."


def _seen(a: str, b: str, v: int, h: int) -> str:
    vert = {-1: "upward", 1: "downward"}.get(v)
    horiz = {-1: "leftward", 1: "rightward"}.get(h)
    way = f"{vert} and {horiz}" if vert and horiz else f"directly {vert or horiz}"
    return f"Seen from {b}, {a} lies {way}."


RELATION_SENTENCES = (_compare, _has, _seen)


def relation_sentence(objects: Sequence[SceneObject], pair: tuple[int, int], style: int,
                      rng: np.random.Generator) -> str:
    """Where object ``pair[0]`` lies relative to object ``pair[1]``, in a drawn construction."""
    i, j = pair
    v, h = direction(objects[i], objects[j])
    build = RELATION_SENTENCES[int(rng.integers(len(RELATION_SENTENCES)))]
    return build(name(objects, i, style, rng), name(objects, j, style, rng), v, h)
