"""Unseen-style captions of a scene and its near twins: sentences in a planned order, filled to a length.

The layout (count first, background first, or relations first), the object order (row by row,
grouped by colour, grouped by kind, or shuffled) and the phrasing come from one ``Plan`` per group
of twins. Fillers (texture note, grid note, empty cells, further relations) are added, the same ones
at the same places for every member, until each member's caption reaches ``MIN_TOKENS`` and, for a
late group, names the mutated object only after ``LATE_TOKEN`` tokens; a draw over ``MAX_TOKENS`` is
drawn again. The lengths are the own grammar's, so both styles ask the same of a text encoder.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llm2clip.data.captions.long import LATE_TOKEN, MAX_TOKENS, MIN_TOKENS, LongCaption, TokenCounter
from llm2clip.data.captions.segments import Segment
from llm2clip.data.captions.unseen import vocabulary as V
from llm2clip.data.captions.unseen.plan import Plan, draw_plan
from llm2clip.data.captions.unseen.sentences import (
    background_sentence,
    class_word,
    count_sentence,
    fillers,
    number,
    object_clause,
    piece_word,
    referring,
    relation_sentence,
)
from llm2clip.data.captions.wording import an, cap, join
from llm2clip.data.scene_graph import CLASSES, COLOURS, SceneGraph, SceneObject
from llm2clip.errors import DatasetError

ATTEMPTS, RELAXED_AFTER = 64, 16  # plans drawn; after RELAXED_AFTER, one relation up front only


@dataclass(frozen=True)
class UnseenCaptions:
    """One scene's captions in the unseen style."""

    long: LongCaption
    short: str


@dataclass(frozen=True)
class _Group:
    graphs: Sequence[SceneGraph]
    distractors: Sequence[Sequence[Sequence[SceneObject]]]  # per member, per object
    count_tokens: TokenCounter
    late: int | None
    watch: int | None


def object_order(plan: Plan, graph: SceneGraph, late: int | None) -> list[int]:
    """Objects in the plan's order; a late object last."""
    objs = graph.objects
    keys = {
        "reading": lambda i: (objs[i].cell,),
        "colour": lambda i: (COLOURS.index(objs[i].colour), plan.tiebreak[i]),
        "class": lambda i: (CLASSES.index(objs[i].category), plan.tiebreak[i]),
        "shuffled": lambda i: (plan.tiebreak[i],),
    }
    order = sorted(range(len(objs)), key=keys[plan.order])
    if late is not None:
        order.remove(late)
        order.append(late)
    return order


def _skeleton(plan: Plan, graph: SceneGraph, refs: Sequence[str], late: int | None) -> list[Segment]:
    """The sentences every caption of the plan holds, in the layout's order."""
    n = len(graph.objects)
    objects = [Segment(object_clause(graph.objects[i], plan.objects[i]), frozenset((i,)))
               for i in object_order(plan, graph, late)]
    note = V.ORDERS[plan.order]
    if note is not None and n > 1:
        objects.insert(0, Segment(note, frozenset()))
    core = [relation_sentence(plan, r, graph.objects, refs) for r in range(plan.n_core)]
    background = background_sentence(plan, graph)
    if plan.layout == "background-first":
        seq = [background, *objects, *core, count_sentence(plan, n, closing=True)]
    elif plan.layout == "relations-first":
        seq = [count_sentence(plan, n, closing=False), *core, *objects, background]
    else:
        seq = [count_sentence(plan, n, closing=False), *objects, *core, background]
    if late is not None:
        # everything that depends on the late object after everything that does not
        seq = [s for s in seq if late not in s.refs] + [s for s in seq if late in s.refs]
    return seq


def _render(plan: Plan, group: _Group, member: int, n_fill: int) -> list[Segment]:
    """Member ``member``'s sentences with the plan's first ``n_fill`` fillers in place."""
    graph, late = group.graphs[member], group.late
    refs = [referring(o, group.distractors[member][i], plan.objects[i]) for i, o in enumerate(graph.objects)]
    seq = _skeleton(plan, graph, refs, late)
    pool = fillers(plan, graph, refs)
    if late is not None:
        pool = [f for f in pool if late not in f.refs] + [f for f in pool if late in f.refs]
    for seg, u in zip(pool[:n_fill], plan.positions, strict=False):
        lo, hi = 1, len(seq)  # the opening sentence stays first
        if late is not None:
            first = next(j for j, s in enumerate(seq) if late in s.refs)
            lo, hi = (first + 1, len(seq)) if late in seg.refs else (1, first)
        seq.insert(lo + int(u * (hi - lo + 1)), seg)
    return seq


def _text(seq: Sequence[Segment], upto: int | None = None) -> str:
    return " ".join(s.text for s in seq[:upto])


def _tokens_before(seq: Sequence[Segment], obj: int, count: TokenCounter) -> int:
    return count(_text(seq, next(j for j, s in enumerate(seq) if obj in s.refs)))


def _long(seq: Sequence[Segment], group: _Group) -> LongCaption:
    mention = _tokens_before(seq, group.watch, group.count_tokens) if group.watch is not None else None
    relations = [s.relation for s in seq if s.relation is not None]
    return LongCaption(_text(seq), group.count_tokens(_text(seq)), relations, mention)


def _fit(plan: Plan, group: _Group) -> list[LongCaption] | None:
    """The fewest fillers that bring every member to its length (and lateness); None past MAX_TOKENS."""
    members = range(len(group.graphs))
    for n_fill in range(len(plan.positions) + 1):
        seqs = [_render(plan, group, m, n_fill) for m in members]
        caps = [_long(seq, group) for seq in seqs]
        late_ok = group.late is None or all(
            _tokens_before(seq, group.late, group.count_tokens) >= LATE_TOKEN for seq in seqs
        )
        if late_ok and all(c.tokens >= MIN_TOKENS for c in caps):
            return caps if all(c.tokens <= MAX_TOKENS for c in caps) else None
    return None


def short_caption(graph: SceneGraph, plan: Plan) -> str:
    """Kinds and background in at most ``SHORT_WORDS`` words ("two trainers and a tote against a spotted blue
    backdrop"); kinds in the order they are first met reading row by row."""
    objs = sorted(graph.objects, key=lambda o: o.cell)
    counts = Counter(o.category for o in objs)
    kinds = list(dict.fromkeys(o.category for o in objs))

    def entry(c: str, shortest: bool, bare: bool) -> str:
        word = class_word(c, 0.0 if shortest else plan.short[1 + CLASSES.index(c)], plural=counts[c] > 1)
        return f"{number(plan, counts[c])} {word}" if counts[c] > 1 else word if bare else f"{an(word)} {word}"

    bg = graph.background
    words = {
        "tex": plan.pick(plan.background[1], V.TEXTURE_WORDS[bg.texture]),
        "colour": bg.colour,
        "N": cap(number(plan, len(objs))),
        "pieces": piece_word(plan, len(objs)),
    }
    template = plan.pick(plan.short[0], V.SHORT_TEMPLATES)
    for shortest, bare in ((False, False), (True, False), (True, True)):
        text = template.format(list=join([entry(c, shortest, bare) for c in kinds]), **words)
        if len(text.split()) <= V.SHORT_WORDS:
            return text
    return join([entry(c, True, True) for c in kinds])


def unseen_captions(
    graphs: Sequence[SceneGraph],
    rng: np.random.Generator,
    count_tokens: TokenCounter,
    distractors: Sequence[Sequence[Sequence[SceneObject]]] | None = None,
    late: int | None = None,
    watch: int | None = None,
) -> list[UnseenCaptions]:
    """Unseen-style captions of ``graphs``: one scene, or a scene and its near twins (same objects, one fact apart).

    All members are phrased from one plan, so their captions differ only where their facts do. ``distractors``
    (per member, per object: what a referring expression must not fit) default to each graph's other objects;
    ``late``: an object no sentence before token LATE_TOKEN may depend on; ``watch``: the object whose first
    mention ``LongCaption.mention`` reports."""
    n = len(graphs[0].objects)
    if any(len(g.objects) != n for g in graphs):
        raise DatasetError("near twins must hold the same number of objects")
    if distractors is None:
        distractors = [[g.others(i) for i in range(n)] for g in graphs]
    group = _Group(graphs, distractors, count_tokens, late, watch)
    for attempt in range(ATTEMPTS):
        plan = draw_plan(n, rng, compact=attempt >= RELAXED_AFTER)
        caps = _fit(plan, group)
        if caps is not None:
            return [UnseenCaptions(c, short_caption(g, plan)) for c, g in zip(caps, graphs, strict=True)]
    raise DatasetError(
        f"could not phrase an unseen-style caption of {MIN_TOKENS}..{MAX_TOKENS} tokens for {graphs[0].to_json()}"
    )
