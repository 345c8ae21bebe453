"""The parts of a caption, one kind of sentence at a time, and the long caption's rules with a word counter."""

from __future__ import annotations

import re

import numpy as np
import pytest

from llm2clip.data.captions import LATE_TOKEN, MAX_TOKENS, MIN_TOKENS, long_caption, short_caption
from llm2clip.data.captions.segments import (
    StatedRelation,
    edge_phrase,
    empty_cells_sentence,
    referring,
    relation_segment,
)
from llm2clip.data.scene_graph import Background, SceneGraph, SceneObject, relation
from llm2clip.errors import DatasetError


def obj(category="sneaker", colour="red", size="small", orientation="upright", row="top", col="left"):
    return SceneObject(category, colour, size, orientation, row, col)


def words(text: str) -> int:
    return len(text.split())


class Always:
    """A stand-in generator whose every integer draw is ``value``: picks a known template."""

    def __init__(self, value: int) -> None:
        self.value = value

    def integers(self, *_args) -> int:
        return self.value


@pytest.mark.parametrize(
    ("others", "start", "want"),
    [
        ([obj(colour="blue")], 0, "the red sneaker"),
        ([obj(colour="blue")], 1, "the small red sneaker"),
        ([obj(size="large")], 0, "the small red sneaker"),
        ([obj(size="large")], 2, "the upright small red sneaker"),
        ([obj(orientation="mirrored")], 0, "the upright small red sneaker"),
        ([obj(row="bottom")], 0, "the red sneaker in the top left cell"),
        ([obj(category="trouser", colour="blue")], 0, "the red sneaker"),
    ],
)
def test_referring_expressions_say_as_much_as_tells_apart(others, start, want):
    assert referring(obj(), others, start) == want


@pytest.mark.parametrize(
    ("row", "col", "want"),
    [
        ("top", "left", "in the top left corner of the picture"),
        ("middle", "center", "at the very center of the picture"),
        ("middle", "right", "along the right edge of the picture, halfway down"),
        ("bottom", "center", "along the bottom edge of the picture, in the center"),
    ],
)
def test_edge_phrases(row, col, want):
    assert edge_phrase(obj(row=row, col=col)) == want


def test_the_inverse_relation_template_swaps_subject_and_object():
    objects = [obj(), obj(colour="blue", row="bottom", col="right")]
    refs = ["the red sneaker", "the blue sneaker"]
    plain = relation_segment((0, 1), objects, refs, Always(0))
    assert plain.text == "The red sneaker is above and to the left of the blue sneaker."
    assert plain.relation == StatedRelation(0, 1, relation(objects[0], objects[1]))
    inverse = relation_segment((0, 1), objects, refs, Always(3))
    assert inverse.text == "The blue sneaker lies below and to the right of the red sneaker."
    assert inverse.relation == StatedRelation(1, 0, "below and to the right of")
    assert plain.refs == inverse.refs == frozenset((0, 1))


def test_empty_cells_are_listed_in_grid_order():
    text = empty_cells_sentence([obj(), obj(row="middle", col="center")])
    assert text == ("The top center, top right, middle left, middle right, bottom left, bottom center and "
                    "bottom right cells are empty.")


GRAPH = SceneGraph(
    Background("green", "striped"),
    (
        obj(),
        obj("bag", "blue", "large", "mirrored", "middle", "center"),
        obj("dress", "white", "medium", "upside down", "bottom", "right"),
        obj("coat", "red", "large", "upright", "top", "right"),
    ),
)


def first_mention(text: str, k: int) -> int:
    """Words before the first sentence that names object k (all its objects differ in class)."""
    noun = {"sneaker": "sneaker", "bag": "bag", "dress": "dress", "coat": "coat"}[GRAPH.objects[k].category]
    parts = re.split(r"(?<=\.)\s+", text)
    first = next(j for j, s in enumerate(parts) if noun in s)
    return words(" ".join(parts[:first]))


@pytest.mark.parametrize("seed", range(8))
def test_a_late_object_is_named_after_77_tokens(seed):
    cap = long_caption(GRAPH, np.random.default_rng(seed), words, late=2, watch=2)
    assert cap.mention == first_mention(cap.text, 2) and cap.mention >= LATE_TOKEN
    assert MIN_TOKENS <= cap.tokens == words(cap.text) <= MAX_TOKENS
    assert all(2 not in (r.subject, r.object) or r.relation in cap.text for r in cap.relations)


def test_without_a_late_object_the_mention_is_only_measured():
    mentions = {long_caption(GRAPH, np.random.default_rng(s), words, watch=1).mention for s in range(12)}
    assert min(mentions) < LATE_TOKEN  # unconstrained, the watched object often comes early
    assert long_caption(GRAPH, np.random.default_rng(0), words).mention is None


def test_a_caption_that_cannot_fit_is_refused():
    with pytest.raises(DatasetError, match="could not phrase"):
        long_caption(GRAPH, np.random.default_rng(0), lambda text: MAX_TOKENS + 1)


def test_short_caption_orders_by_count_then_class():
    graph = SceneGraph(Background("red", "plain"), (obj("bag"), obj("coat"), obj("coat")))
    assert short_caption(graph) == "three items: two coats and a bag, on a plain red background"
