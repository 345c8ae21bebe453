"""Long captions: every fact of a scene graph, in 60..250 tokens, sentences in a drawn order.

Long captions are measured with ``llm2clip.defaults.default_tokenizer()`` (SmolLM2, Llama family, no
special tokens); sentences are added (background detail, grid, an item's place on the canvas, further
relations, empty cells) until a caption reaches 60 tokens, and a caption over 250 is drawn again. A
one-object scene has no relation between two objects; its caption says where the item sits on the
canvas (and which cells are empty) instead. Every scene with two or more objects states at least one
pairwise relation.

For a late object (a test twin's mutated one), its description comes last among the objects,
everything that refers to it comes after, and sentences that do not depend on it fill the first 77
tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llm2clip.data.captions import templates as T
from llm2clip.data.captions.segments import (
    Segment,
    StatedRelation,
    closing_sentence,
    draw_opening,
    edge_segment,
    empty_cells_sentence,
    object_sentence,
    referring,
    relation_segment,
)
from llm2clip.data.captions.wording import pick
from llm2clip.data.scene_graph import SceneGraph, SceneObject
from llm2clip.errors import DatasetError

TokenCounter = Callable[[str], int]
MIN_TOKENS, MAX_TOKENS = 60, 250
LATE_TOKEN = 77  # a CLIP text tower reads this many tokens
ATTEMPTS, RELAXED_AFTER = 64, 16  # draws of a caption; after RELAXED_AFTER, one relation up front only


@dataclass(frozen=True)
class LongCaption:
    text: str
    tokens: int
    relations: list[StatedRelation]
    mention: int | None  # tokens before the first sentence that depends on the watched object


@dataclass(frozen=True)
class CaptionTarget:
    """What a long caption must meet besides stating the graph."""

    count_tokens: TokenCounter
    distractors: Sequence[Sequence[SceneObject]]  # per object: what its referring expression must not fit
    late: int | None = None  # an object no sentence before token LATE_TOKEN may depend on
    watch: int | None = None  # an object whose first mention (in tokens) the caption reports


def default_token_counter() -> TokenCounter:
    from llm2clip.defaults import default_tokenizer

    tok = default_tokenizer()
    return lambda text: len(tok.encode(text, add_special_tokens=False))


class _Layout:
    """The caption's sentences in order; a new one goes at a random place that keeps the rules."""

    def __init__(self, segments: list[Segment], target: CaptionTarget, rng: np.random.Generator) -> None:
        self.segments, self.target, self.rng = segments, target, rng

    def place(self, seg: Segment) -> None:
        seq, late = self.segments, self.target.late
        # after the opening and after the descriptions of the objects it names
        lo = max((j + 1 for j, s in enumerate(seq) if s.fixed and (s.refs & seg.refs or not s.refs)), default=0)
        hi = len(seq)
        if late is not None and late not in seg.refs:
            hi = next(j for j, s in enumerate(seq) if late in s.refs)
        seq.insert(int(self.rng.integers(lo, hi + 1)), seg)

    def text(self, upto: int | None = None) -> str:
        return " ".join(s.text for s in self.segments[:upto])

    def tokens(self) -> int:
        return self.target.count_tokens(self.text())

    def tokens_before(self, obj: int) -> int:
        first = next(j for j, s in enumerate(self.segments) if obj in s.refs)
        return self.target.count_tokens(self.text(first))


def _object_segments(graph: SceneGraph, late: int | None, rng: np.random.Generator) -> list[Segment]:
    # objects in shuffled order; the late object last
    order = [int(i) for i in rng.permutation(len(graph.objects))]
    if late is not None:
        order.remove(late)
        order.append(late)
    return [Segment(object_sentence(graph.objects[i], rng), frozenset((i,)), fixed=True) for i in order]


def _relation_pairs(n: int, rng: np.random.Generator, compact: bool) -> tuple[list[tuple[int, int]], int]:
    """Every pair of objects, shuffled and each way round at random; how many of them the caption must state."""
    pairs = [(int(a), int(b)) for a, b in itertools.combinations(range(n), 2)]
    pairs = [pairs[int(j)] for j in rng.permutation(len(pairs))]
    pairs = [(b, a) if rng.integers(2) else (a, b) for a, b in pairs]
    n_core = 0 if not pairs else 1 if compact else int(rng.integers(1, min(3, len(pairs)) + 1))
    return pairs, n_core


def _fillers(
    graph: SceneGraph, refs: list[str], pairs: list[tuple[int, int]], rng: np.random.Generator
) -> list[Segment]:
    """Sentences that may make up the length, in the order they are taken (from the end)."""
    objects, n = graph.objects, len(graph.objects)
    every = frozenset(range(n))
    bg = graph.background
    fillers = [
        Segment(T.TEXTURE_DETAIL[bg.texture].format(c=bg.colour), frozenset()),
        Segment(pick(rng, T.GRID_SENTENCES), frozenset()),
    ]
    fillers += [edge_segment(i, objects, refs) for i in range(n)]
    fillers += [relation_segment(pair, objects, refs, rng) for pair in pairs]
    fillers.append(Segment(empty_cells_sentence(objects), every))
    if n == 1:
        fillers.append(Segment(T.ALONE, every))
    return [fillers[int(j)] for j in rng.permutation(len(fillers))]


def _fill(layout: _Layout, fillers: list[Segment]) -> LongCaption | None:
    """Add fillers until the late object comes after LATE_TOKEN and the caption reaches MIN_TOKENS."""
    late, watch = layout.target.late, layout.target.watch
    if late is not None:
        # fill the first 77 tokens with sentences that do not depend on the late object
        early = [f for f in fillers if late not in f.refs]
        fillers = [f for f in fillers if late in f.refs]
        while layout.tokens_before(late) < LATE_TOKEN:
            if not early:
                return None
            layout.place(early.pop())
        fillers = early + fillers
    while layout.tokens() < MIN_TOKENS:
        if not fillers:
            return None
        layout.place(fillers.pop())
    tokens = layout.tokens()
    if tokens > MAX_TOKENS:
        return None
    mention = layout.tokens_before(watch) if watch is not None else None
    relations = [s.relation for s in layout.segments if s.relation is not None]
    return LongCaption(text=layout.text(), tokens=tokens, relations=relations, mention=mention)


def _draw(graph: SceneGraph, rng: np.random.Generator, target: CaptionTarget, compact: bool) -> LongCaption | None:
    """One draw of a long caption, or None when it misses its length (or lateness) target."""
    n = len(graph.objects)
    opening = draw_opening(graph, rng)
    segments = [] if opening.first is None else [Segment(opening.first, frozenset(), fixed=True)]
    segments += _object_segments(graph, target.late, rng)
    refs = [referring(graph.objects[i], target.distractors[i], int(rng.integers(2))) for i in range(n)]
    pairs, n_core = _relation_pairs(n, rng, compact)
    core = [relation_segment(pair, graph.objects, refs, rng) for pair in pairs[:n_core]]
    if opening.background is not None:
        core.append(Segment(opening.background, frozenset()))
    if opening.first is None:
        # "in all" reads right only once the objects have been described
        core.append(Segment(closing_sentence(n, rng), frozenset(range(n))))
    fillers = _fillers(graph, refs, pairs[n_core:], rng)
    layout = _Layout(segments, target, rng)
    for seg in core:
        layout.place(seg)
    return _fill(layout, fillers)


def long_caption(
    graph: SceneGraph,
    rng: np.random.Generator,
    count_tokens: TokenCounter,
    distractors: Sequence[Sequence[SceneObject]] | None = None,
    late: int | None = None,
    watch: int | None = None,
) -> LongCaption:
    """Draw long captions until one is 60..250 tokens (and mentions ``late`` after 77 tokens).

    ``distractors`` (per object) default to the graph's other objects; ``watch`` is the object whose
    first mention ``LongCaption.mention`` reports."""
    if distractors is None:
        distractors = [graph.others(i) for i in range(len(graph.objects))]
    target = CaptionTarget(count_tokens, distractors, late, watch)
    for attempt in range(ATTEMPTS):
        cap = _draw(graph, rng, target, compact=attempt >= RELAXED_AFTER)
        if cap is not None:
            return cap
    raise DatasetError(f"could not phrase a long caption of {MIN_TOKENS}..{MAX_TOKENS} tokens for {graph.to_json()}")
