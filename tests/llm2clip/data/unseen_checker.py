"""Reads a scene graph's facts back out of an unseen-style caption, through the unseen vocabulary only.

``missing_facts(text, graph, relations)`` lists every fact of the graph the caption does not state: an
object's class, colour, size, orientation and cell (all in one sentence, and no other cell named
there), the background's colour and texture, the object count, and each stated relation. An empty
list means the caption says everything; the twins' graphs and own-style captions give non-empty ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from llm2clip.data import SceneGraph, SceneObject
from llm2clip.data.captions.unseen import vocabulary as V
from llm2clip.data.scene_graph import COLS, ROWS


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?])\s+", text.strip())


def find(text: str, phrase: str) -> list[tuple[int, int]]:
    """Spans of ``phrase`` as whole words (a hyphen joins words: "tee" is not in "tee-shirt")."""
    pattern = rf"(?<![\w-]){re.escape(phrase)}(?![\w-])"
    return [m.span() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]


def has_any(text: str, phrases: Iterable[str]) -> bool:
    return any(find(text, p) for p in phrases)


def cells_named(text: str) -> set[tuple[str, str]]:
    """The cells a sentence names, longest phrases first so that "middle of the top row" is not "top row"."""
    phrases = sorted(((p, cell) for cell, ps in V.CELL_WORDS.items() for p in ps), key=lambda x: -len(x[0]))
    taken: list[tuple[int, int]] = []
    cells = set()
    for phrase, cell in phrases:
        for a, b in find(text, phrase):
            if not any(a < y and x < b for x, y in taken):
                taken.append((a, b))
                cells.add(cell)
    return cells


def class_words(category: str) -> list[str]:
    return [w for pair in V.CLASS_WORDS[category] for w in pair]


def describes(sentence: str, obj: SceneObject) -> bool:
    return (
        has_any(sentence, [obj.colour, f"{obj.colour}-coloured"])
        and has_any(sentence, class_words(obj.category))
        and has_any(sentence, [*V.SIZE_ADJECTIVES[obj.size], *V.SIZE_PHRASES[obj.size]])
        and has_any(sentence, [*V.ORIENT_PREDICATES[obj.orientation], V.ORIENT_ADJECTIVES[obj.orientation]])
        and cells_named(sentence) == {(obj.row, obj.col)}
    )


def states_count(text: str, n: int) -> bool:
    if n == 1:
        return has_any(text, ["a lone piece", "one piece", "a single article", "that one piece", "that single piece"])
    counts = [f"{w} {p}" for w in (V.NUMBER_WORDS[n], V.DIGITS[n]) for p in V.PIECE_WORDS]
    return has_any(text, counts)


def states_relation(text: str, a: SceneObject, b: SceneObject) -> bool:
    """A sentence naming both objects (colour and class) and where ``a`` lies from ``b`` in unseen words."""
    dr = ROWS.index(a.row) - ROWS.index(b.row)
    dc = COLS.index(a.col) - COLS.index(b.col)
    words = V.RELATION_WORDS[((dr > 0) - (dr < 0), (dc > 0) - (dc < 0))]
    return any(
        has_any(s, words) and all(has_any(s, [o.colour, f"{o.colour}-coloured"]) and has_any(s, class_words(o.category)) for o in (a, b))
        for s in sentences(text)
    )


def missing_facts(text: str, graph: SceneGraph, relations: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Every fact of ``graph`` (and of the stated ``relations``, meta's form) that ``text`` does not state."""
    missing = []
    for i, obj in enumerate(graph.objects):
        if not any(describes(s, obj) for s in sentences(text)):
            missing.append(f"object {i}: {obj}")
    bg = graph.background
    if not any(has_any(s, [bg.colour, f"{bg.colour}-coloured"]) and has_any(s, V.TEXTURE_WORDS[bg.texture]) for s in sentences(text)):
        missing.append(f"background {bg}")
    if not states_count(text, len(graph.objects)):
        missing.append(f"count {len(graph.objects)}")
    for r in relations:
        if not states_relation(text, graph.objects[r["subject"]], graph.objects[r["object"]]):
            missing.append(f"relation {r}")
    return missing
