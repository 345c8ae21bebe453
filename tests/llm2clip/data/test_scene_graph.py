"""Scene graphs: the JSON of an item's meta, cells, relations and the random draws."""

from __future__ import annotations

import numpy as np
import pytest

from llm2clip.data.scene_graph import (
    CLASSES,
    COLS,
    ROWS,
    SceneGraph,
    SceneObject,
    draw_scene,
    relation,
)

META = {
    "split": "train",
    "background": {"colour": "teal", "texture": "dotted"},
    "objects": [
        {"class": "bag", "colour": "red", "size": "small", "orientation": "mirrored", "row": "top", "col": "left",
         "fmnist_index": 17},
        {"class": "ankle boot", "colour": "white", "size": "large", "orientation": "upright", "row": "bottom",
         "col": "center", "fmnist_index": 4},
    ],
    "long_tokens": 80,
}
# one pool of ten photos per class: photo // 10 is its class
POOLS = [np.arange(10 * c, 10 * c + 10) for c in range(len(CLASSES))]


def test_json_round_trip_keeps_keys_order_and_values():
    graph = SceneGraph.from_json(META)
    assert graph.objects[1] == SceneObject("ankle boot", "white", "large", "upright", "bottom", "center", 4)
    out = graph.to_json()
    assert out == {"background": META["background"], "objects": META["objects"]}
    assert list(out) == ["background", "objects"] and list(out["background"]) == ["colour", "texture"]
    assert list(out["objects"][0]) == ["class", "colour", "size", "orientation", "row", "col", "fmnist_index"]


def test_a_graph_without_photos_stays_without_them():
    objects = [{k: v for k, v in o.items() if k != "fmnist_index"} for o in META["objects"]]
    graph = SceneGraph.from_json({"background": META["background"], "objects": objects})
    assert graph.objects[0].fmnist_index is None
    assert graph.to_json()["objects"] == objects


def test_cells_count_row_by_row():
    obj = SceneGraph.from_json(META).objects[1]
    assert obj.cell == 7 and obj.attribute("cell") == 7
    assert obj.attribute("class") == "ankle boot" and obj.attribute("size") == "large"
    moved = obj.at_cell(5)
    assert (moved.row, moved.col, moved.cell) == ("middle", "right", 5)
    assert [SceneObject("bag", "red", "small", "upright", r, c).cell for r in ROWS for c in COLS] == list(range(9))


def test_others_and_with_object():
    graph = SceneGraph.from_json(META)
    assert graph.others(0) == [graph.objects[1]]
    moved = graph.with_object(0, graph.objects[0].at_cell(4))
    assert moved.objects[0].cell == 4 and moved.objects[1] == graph.objects[1]
    assert graph.objects[0].cell == 0  # the original is untouched


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ((0, 0), (1, 0), "directly above"),
        ((2, 1), (0, 1), "directly below"),
        ((1, 0), (1, 2), "directly to the left of"),
        ((0, 2), (2, 0), "above and to the right of"),
        ((2, 0), (1, 1), "below and to the left of"),
    ],
)
def test_relation_reads_the_cells(a, b, want):
    def at(rc: tuple[int, int]) -> SceneObject:
        return SceneObject("coat", "red", "small", "upright", ROWS[rc[0]], COLS[rc[1]])

    assert relation(at(a), at(b)) == want


def test_draw_scene_keeps_the_rules():
    for seed in range(30):
        graph = draw_scene(np.random.default_rng(seed), POOLS, 2, 4)
        assert 2 <= len(graph.objects) <= 4
        assert len({o.cell for o in graph.objects}) == len(graph.objects)
        for o in graph.objects:
            assert o.colour != graph.background.colour
            assert CLASSES[o.fmnist_index // 10] == o.category


def test_draw_scene_is_a_function_of_the_generator_state():
    a = draw_scene(np.random.default_rng(5), POOLS, 1, 6)
    assert a == draw_scene(np.random.default_rng(5), POOLS, 1, 6)
    assert a != draw_scene(np.random.default_rng(6), POOLS, 1, 6)
