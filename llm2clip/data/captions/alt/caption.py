"""A scene's long caption in the alt grammar: the own long caption's facts, as another writer would put them.

The writer draws, per caption: how squares are named, the order of the objects (as listed, row by row,
column by column, largest first, or shuffled), whether they come one a sentence, two a sentence or all in one
list, and where the count and the background go (first, together, or after the objects). Every scene with two
or more objects states one to three relations; sentences that add nothing new to the length (the texture up
close, the grid, the empty squares, more relations) are added until the caption has ``MIN_WORDS`` words.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llm2clip.data.captions.alt import phrasing as P
from llm2clip.data.captions.alt.relations import relation_sentence
from llm2clip.data.captions.wording import pick
from llm2clip.data.scene_graph import SIZES, SceneGraph, SceneObject
from llm2clip.errors import DatasetError

# in words, so that the SmolLM2 token counts fall in the own long captions' 60..250
MIN_WORDS, MAX_WORDS = 56, 145
ATTEMPTS = 32
ORDERS = ("listed", "rows", "columns", "size", "shuffled")
GROUPINGS = ("single", "single", "pairs", "list")
# (before the objects, after them): "count", "background" or "both" (one sentence)
LAYOUTS = (
    (("count", "background"), ()), (("background", "count"), ()), (("both",), ()),
    (("count",), ("background",)), (("background",), ("count",)),
    ((), ("background", "count")), ((), ("count", "background")),
)


@dataclass(frozen=True)
class _Segment:
    text: str
    refs: frozenset[int]  # objects that must be described before it
    describes: frozenset[int] = frozenset()


def sorted_order(objects: tuple[SceneObject, ...], order: str) -> list[int]:
    """Object indices "listed", by "rows" (reading order), by "columns" or by "size" (largest first)."""
    keys: dict[str, Callable[[int], tuple[int, ...]]] = {
        "listed": lambda i: (),
        "rows": lambda i: (objects[i].cell,),
        "columns": lambda i: (objects[i].cell % 3, objects[i].cell // 3),
        "size": lambda i: (-tuple(SIZES).index(objects[i].size),),
    }
    return sorted(range(len(objects)), key=keys[order])


def _objects(graph: SceneGraph, style: int, rng: np.random.Generator) -> list[_Segment]:
    """The object descriptions in a drawn order and grouping, each knowing which objects it describes."""
    n = len(graph.objects)
    how = "listed" if n == 1 else pick(rng, ORDERS)
    order = [int(i) for i in rng.permutation(n)] if how == "shuffled" else sorted_order(graph.objects, how)
    objects = [graph.objects[i] for i in order]
    grouping = pick(rng, GROUPINGS) if n > 1 else "single"
    if grouping == "list":
        # the header names an order the list follows ("row by row" for a shuffle that came out so)
        named = [k for k in ("rows", "columns", "size", "listed") if sorted_order(graph.objects, k) == order]
        name = named[0] if named else "shuffled"
        text = P.list_sentence(objects, style, P.LIST_HEADERS[name], rng)
        return [_Segment(text, frozenset(), frozenset(order))]
    texts = P.object_sentences(objects, style, grouping, rng)
    per = 2 if grouping == "pairs" else 1
    return [_Segment(t, frozenset(), frozenset(order[k * per : (k + 1) * per])) for k, t in enumerate(texts)]


def _relations(
    graph: SceneGraph, style: int, rng: np.random.Generator
) -> tuple[list[_Segment], list[_Segment]]:
    """The relations the caption must state, and more that may fill it up."""
    n = len(graph.objects)
    if n < 2:
        return [], []
    pairs = [(int(a), int(b)) for a, b in itertools.combinations(range(n), 2)]
    pairs = [pairs[int(j)] for j in rng.permutation(len(pairs))]
    pairs = [(b, a) if rng.integers(2) else (a, b) for a, b in pairs]
    core = int(rng.integers(1, min(3, len(pairs)) + 1))
    segs = [_Segment(relation_sentence(graph.objects, p, style, rng), frozenset(p)) for p in pairs]
    return segs[:core], segs[core:]


def _ends(graph: SceneGraph, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """The count and background sentences before the objects and after them."""
    bg, n = graph.background, len(graph.objects)
    head, tail = LAYOUTS[int(rng.integers(len(LAYOUTS)))]
    build = {
        "count": lambda at_end: P.count_sentence(n, at_end, rng),
        "background": lambda at_end: P.background_sentence(bg, n, at_end, rng),
        "both": lambda at_end: P.count_with_background(bg, n, rng),
    }
    return [build[k](False) for k in head], [build[k](True) for k in tail]


def _insert(body: list[_Segment], seg: _Segment, rng: np.random.Generator) -> None:
    """Put ``seg`` at a random place after the descriptions of the objects it names."""
    described: set[int] = set()
    lo = 0
    while not seg.refs <= described:
        described |= body[lo].describes
        lo += 1
    body.insert(int(rng.integers(lo, len(body) + 1)), seg)


def _fillers(graph: SceneGraph, style: int, rng: np.random.Generator) -> list[_Segment]:
    bg = graph.background
    fillers = [
        _Segment(P.texture_detail(bg), frozenset()),
        _Segment(pick(rng, P.GRID_SENTENCES), frozenset()),
        _Segment(P.empty_sentence(graph.objects, style, rng), frozenset()),
    ]
    if len(graph.objects) == 1:
        fillers.append(_Segment(pick(rng, P.ALONE_SENTENCES), frozenset((0,))))
    return fillers


def _draw(graph: SceneGraph, rng: np.random.Generator) -> str | None:
    style = int(rng.integers(P.CELL_STYLES))
    head, tail = _ends(graph, rng)
    body = _objects(graph, style, rng)
    core, more = _relations(graph, style, rng)
    for seg in core:
        _insert(body, seg, rng)
    fillers = _fillers(graph, style, rng) + more
    fillers = [fillers[int(j)] for j in rng.permutation(len(fillers))]

    def text() -> str:
        return " ".join([*head, *(s.text for s in body), *tail])

    while len(text().split()) < MIN_WORDS:
        if not fillers:
            return None
        _insert(body, fillers.pop(), rng)
    return text() if len(text().split()) <= MAX_WORDS else None


def alt_caption(graph: SceneGraph, rng: np.random.Generator) -> str:
    """The long caption of ``graph`` in the alt grammar: every fact of the own long caption, in other
    sentence orders and constructions, drawn from ``rng``."""
    for _ in range(ATTEMPTS):
        text = _draw(graph, rng)
        if text is not None:
            return text
    raise DatasetError(
        f"could not phrase an alt caption of {MIN_WORDS}..{MAX_WORDS} words for {graph.to_json()}"
    )
