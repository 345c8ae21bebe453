"""Every random choice of one unseen-style caption, drawn before any fact is read.

A plan is drawn from the generator in a sequence that depends only on the number of objects, and
the sentences are then written from the plan and the facts (``sentences``). A scene's near twins are
phrased from the same plan, so their captions agree word for word wherever their facts agree, and
differ where one fact differs (and where that fact moves an object in a sorted order).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llm2clip.data.captions.unseen import vocabulary as V

LAYOUTS = ("count-first", "background-first", "relations-first")
# per object: template, noun, size word, size phrase, orientation, cell, referring form, referring start
OBJECT_SLOTS = 8
BACKGROUND_SLOTS = 5  # template, texture word, backdrop word, piece word, digits or words
FIXED_FILLERS = 3  # texture note, grid note, empty cells


@dataclass(frozen=True)
class ObjectChoices:
    """The phrasing of one object, as fractions in [0, 1) that index whatever options its facts have."""

    u: tuple[float, ...]

    def pick(self, slot: int, options: Sequence[str]) -> str:
        return options[int(self.u[slot] * len(options))]

    @property
    def referring_start(self) -> int:
        """0 or 1: skip the shortest referring form, so that some captions say more than they must."""
        return int(self.u[7] * 2)


@dataclass(frozen=True)
class RelationChoice:
    pair: tuple[int, int]  # (subject, object)
    template: float
    words: float


@dataclass(frozen=True)
class Plan:
    n: int
    layout: str
    order: str  # a key of vocabulary.ORDERS
    tiebreak: tuple[int, ...]  # per object, its rank among equals in the order
    objects: tuple[ObjectChoices, ...]
    relations: tuple[RelationChoice, ...]  # every pair once, the first n_core stated in any caption
    n_core: int
    background: tuple[float, ...]
    count: float  # the count sentence's template
    fillers: tuple[int, ...]  # the order fillers are taken in (indices into sentences.fillers)
    positions: tuple[float, ...]  # per filler taken, where it goes among the allowed places
    short: tuple[float, ...]  # the short caption: template, then a noun choice per class

    def pick(self, u: float, options: Sequence[str]) -> str:
        return options[int(u * len(options))]


def n_fillers(n: int) -> int:
    """Texture note, grid note, empty cells, the solo note of a one-object scene, and every pair past the core."""
    return FIXED_FILLERS + (n == 1) + n * (n - 1) // 2


def draw_plan(n: int, rng: np.random.Generator, compact: bool = False) -> Plan:
    """The choices for a caption of ``n`` objects; ``compact``: one relation up front only, for scenes whose
    captions run long."""
    layout = LAYOUTS[int(rng.integers(len(LAYOUTS)))]
    order = tuple(V.ORDERS)[int(rng.integers(len(V.ORDERS)))]
    tiebreak = tuple(int(r) for r in rng.permutation(n))
    objects = tuple(ObjectChoices(tuple(float(x) for x in rng.random(OBJECT_SLOTS))) for _ in range(n))
    pairs = [(int(a), int(b)) for a, b in itertools.combinations(range(n), 2)]
    pairs = [pairs[int(j)] for j in rng.permutation(len(pairs))]
    flips = rng.integers(2, size=len(pairs))
    relations = tuple(
        RelationChoice((b, a) if f else (a, b), float(rng.random()), float(rng.random()))
        for (a, b), f in zip(pairs, flips, strict=True)
    )
    n_core = 0 if not pairs else 1 if compact else int(rng.integers(1, min(3, len(pairs)) + 1))
    background = tuple(float(x) for x in rng.random(BACKGROUND_SLOTS))
    count = float(rng.random())
    total = n_fillers(n) - n_core
    fillers = tuple(int(j) for j in rng.permutation(total))
    positions = tuple(float(x) for x in rng.random(total))
    short = tuple(float(x) for x in rng.random(1 + len(V.CLASS_WORDS)))
    return Plan(n, layout, order, tiebreak, objects, relations, n_core, background, count, fillers, positions, short)
