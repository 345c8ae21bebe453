"""The sentences of an unseen-style caption, written from a ``Plan`` and the facts; no random draws here.

``compose`` orders them; each builder returns a ``Segment`` (the own grammar's: text, the objects it
depends on, the relation it states) so that lateness and relations are tracked the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm2clip.data.captions.segments import Segment, StatedRelation
from llm2clip.data.captions.unseen import vocabulary as V
from llm2clip.data.captions.unseen.plan import ObjectChoices, Plan
from llm2clip.data.captions.wording import an, cap, join
from llm2clip.data.scene_graph import CELLS, COLS, ROWS, SceneGraph, SceneObject, relation

# slots of ObjectChoices
TEMPLATE, NOUN, SIZE, SIZE_PHRASE, ORIENT, CELL, REF_FORM = range(7)
# attributes a referring expression names, fewest first (the own grammar adds size before orientation)
REFERRING_KEYS = (("colour", "class"), ("orientation", "colour", "class"), ("size", "orientation", "colour", "class"))


def class_word(category: str, u: float, plural: bool = False) -> str:
    words = V.CLASS_WORDS[category]
    return words[int(u * len(words))][1 if plural else 0]


def cell_word(row: str, col: str, u: float) -> str:
    words = V.CELL_WORDS[(row, col)]
    return words[int(u * len(words))]


def object_clause(obj: SceneObject, ch: ObjectChoices) -> str:
    """Class, colour, size, orientation and cell of one object, in one sentence."""
    noun = class_word(obj.category, ch.u[NOUN])
    size = ch.pick(SIZE, V.SIZE_ADJECTIVES[obj.size])
    adj = V.ORIENT_ADJECTIVES[obj.orientation]
    text = ch.pick(TEMPLATE, V.OBJECT_TEMPLATES).format(
        noun=noun,
        A_noun=cap(f"{an(noun)} {noun}"),
        colour=obj.colour,
        Colour=cap(obj.colour),
        size=size,
        a_size=f"{an(size)} {size}",
        size_phrase=ch.pick(SIZE_PHRASE, V.SIZE_PHRASES[obj.size]),
        orient=ch.pick(ORIENT, V.ORIENT_PREDICATES[obj.orientation]),
        A_adj=cap(f"{an(adj)} {adj}"),
        cell=cell_word(obj.row, obj.col, ch.u[CELL]),
    )
    return cap(text)


def referring(obj: SceneObject, distractors: Sequence[SceneObject], ch: ObjectChoices) -> str:
    """A description of ``obj`` that fits none of ``distractors`` ("the inverted tee in red")."""
    noun = class_word(obj.category, ch.u[NOUN])
    in_colour = ch.u[REF_FORM] >= 0.5  # "the tee in red" rather than "the red tee"
    for keys in REFERRING_KEYS[ch.referring_start :]:
        if any(all(d.attribute(key) == obj.attribute(key) for key in keys) for d in distractors):
            continue
        words = ["the"]
        if "size" in keys:
            words.append(ch.pick(SIZE, V.SIZE_ADJECTIVES[obj.size]))
        if "orientation" in keys:
            words.append(V.ORIENT_ADJECTIVES[obj.orientation])
        words += [noun, f"in {obj.colour}"] if in_colour else [obj.colour, noun]
        return " ".join(words)
    # same look, another cell: the cell tells them apart
    return f"the {obj.colour} {noun} at the {cell_word(obj.row, obj.col, ch.u[CELL])}"


def relation_words(a: SceneObject, b: SceneObject, u: float) -> str:
    """Where ``a`` lies relative to ``b``, in the unseen vocabulary."""
    dr = ROWS.index(a.row) - ROWS.index(b.row)
    dc = COLS.index(a.col) - COLS.index(b.col)
    words = V.RELATION_WORDS[((dr > 0) - (dr < 0), (dc > 0) - (dc < 0))]
    return words[int(u * len(words))]


def relation_sentence(plan: Plan, r: int, objects: Sequence[SceneObject], refs: Sequence[str]) -> Segment:
    choice = plan.relations[r]
    a, b = choice.pair
    rel = relation_words(objects[a], objects[b], choice.words)
    text = plan.pick(choice.template, V.RELATION_TEMPLATES).format(A=cap(refs[a]), a=refs[a], b=refs[b], rel=rel)
    # recorded in the scene graph's words ("directly above"), so meta reads the same in both styles
    return Segment(cap(text), frozenset((a, b)), StatedRelation(a, b, relation(objects[a], objects[b])))


def piece_word(plan: Plan, n: int) -> str:
    word = plan.pick(plan.background[3], V.PIECE_WORDS)
    return word if n != 1 else word[:-1]


def number(plan: Plan, n: int) -> str:
    return V.DIGITS[n] if plan.background[4] < 0.5 else V.NUMBER_WORDS[n]


def background_sentence(plan: Plan, graph: SceneGraph) -> Segment:
    bg, u = graph.background, plan.background
    text = plan.pick(u[0], V.BACKGROUND_TEMPLATES).format(
        tex=plan.pick(u[1], V.TEXTURE_WORDS[bg.texture]),
        colour=bg.colour,
        backdrop=plan.pick(u[2], V.BACKDROP_WORDS),
        pieces=piece_word(plan, len(graph.objects)),
    )
    return Segment(cap(text), frozenset())


def count_sentence(plan: Plan, n: int, closing: bool) -> Segment:
    """The count: an opening, or a closing that sums up what came before (and so depends on every object)."""
    if closing:
        options = V.COUNT_CLOSINGS_ONE if n == 1 else V.COUNT_CLOSINGS
    else:
        options = V.COUNT_OPENINGS_ONE if n == 1 else V.COUNT_OPENINGS
    n_word = number(plan, n)
    text = plan.pick(plan.count, options).format(n=n_word, N=cap(n_word), pieces=piece_word(plan, n))
    return Segment(text, frozenset(range(n)) if closing else frozenset())


def empty_cells_sentence(plan: Plan, objects: Sequence[SceneObject]) -> Segment:
    taken = {o.cell for o in objects}
    free = [c for c in range(CELLS) if c not in taken]
    # the phrasing of a free cell follows the plan's u of the object slot it would hold, cycling
    u = [plan.objects[c % len(plan.objects)].u[CELL] for c in free]
    names = ["the " + cell_word(ROWS[c // len(COLS)], COLS[c % len(COLS)], x) for c, x in zip(free, u, strict=True)]
    templates = V.EMPTY_ONE_TEMPLATES if len(free) == 1 else V.EMPTY_TEMPLATES
    text = plan.pick(plan.background[0], templates).format(cells=join(names))
    return Segment(text, frozenset(range(len(objects))))


def fillers(plan: Plan, graph: SceneGraph, refs: Sequence[str]) -> list[Segment]:
    """Sentences that may make up a caption's length, in the plan's order."""
    bg, u = graph.background, plan.background
    backdrop = plan.pick(u[2], V.BACKDROP_WORDS)
    n = len(graph.objects)
    pool = [
        Segment(plan.pick(u[1], V.TEXTURE_NOTES[bg.texture]).format(colour=bg.colour, backdrop=backdrop), frozenset()),
        Segment(plan.pick(u[3], V.GRID_NOTES), frozenset()),
        empty_cells_sentence(plan, graph.objects),
    ]
    if n == 1:
        pool.append(Segment(V.SOLO_NOTE, frozenset(range(n))))
    pool += [relation_sentence(plan, r, graph.objects, refs) for r in range(plan.n_core, len(plan.relations))]
    return [pool[j] for j in plan.fillers]
