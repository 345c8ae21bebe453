"""Near twins: exactly one attribute of one object changes, to a value none of the others hold."""

from __future__ import annotations

import numpy as np
import pytest

from llm2clip.data.scene_graph import CLASSES, TWIN_ATTRIBUTES, Background, SceneGraph, SceneObject
from llm2clip.data.twins import TwinDiff, mutate, near_twin_graph

POOLS = [np.arange(10 * c, 10 * c + 10) for c in range(len(CLASSES))]
GRAPH = SceneGraph(
    Background("blue", "plain"),
    (
        SceneObject("bag", "red", "small", "upright", "top", "left", 81),
        SceneObject("coat", "white", "large", "mirrored", "middle", "center", 42),
    ),
)


def changes(a: SceneGraph, b: SceneGraph) -> list[tuple[int, str]]:
    return [(k, attr) for k, (x, y) in enumerate(zip(a.objects, b.objects, strict=True))
            for attr in TWIN_ATTRIBUTES if x.attribute(attr) != y.attribute(attr)]


@pytest.mark.parametrize("attribute", TWIN_ATTRIBUTES)
def test_mutate_changes_one_attribute_to_an_untaken_value(attribute):
    for seed in range(20):
        taken = [GRAPH.objects[1].attribute(attribute)]
        twin = mutate(np.random.default_rng(seed), GRAPH, TwinDiff(1, attribute), POOLS, taken)
        assert changes(GRAPH, twin) == [(1, attribute)]
        new = twin.objects[1]
        assert new.attribute(attribute) not in taken
        assert new.colour != GRAPH.background.colour and new.cell != GRAPH.objects[0].cell
        # the photo changes with the class, and only then, to one of the new class
        assert (new.fmnist_index != 42) == (attribute == "class")
        assert CLASSES[new.fmnist_index // 10] == new.category


def test_a_text_only_twin_keeps_its_photo():
    twin = mutate(np.random.default_rng(0), GRAPH, TwinDiff(0, "class"), None, ["bag"])
    assert twin.objects[0].category != "bag" and twin.objects[0].fmnist_index == 81


def test_near_twin_graph_takes_and_gives_meta():
    meta = {"split": "train", **GRAPH.to_json()}
    seen = set()
    for seed in range(40):
        twin = near_twin_graph(meta, seed)
        assert list(twin) == ["background", "objects"] and twin["background"] == meta["background"]
        diff = changes(GRAPH, SceneGraph.from_json(twin))
        assert len(diff) == 1
        seen.add(diff[0])
        assert near_twin_graph(meta, seed) == twin
    assert {attr for _, attr in seen} == set(TWIN_ATTRIBUTES) and {k for k, _ in seen} == {0, 1}
