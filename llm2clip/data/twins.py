"""Near twins: a scene graph with one attribute of one object changed.

The test split pairs every scene with a twin (see ``generator``); stage 1 draws twins of training
scenes as hard negatives (``near_twin_graph``). A twin keeps the Fashion-MNIST photo of the mutated
object unless the class changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from llm2clip.data.scene_graph import (
    CELLS,
    CLASSES,
    COLOURS,
    ORIENTATIONS,
    SIZES,
    TWIN_ATTRIBUTES,
    ClassPools,
    SceneGraph,
    pick_photo,
)
from llm2clip.data.streams import NEAR_TWIN, stream_rng


@dataclass(frozen=True)
class TwinDiff:
    """What tells twins apart: ``attribute`` (one of TWIN_ATTRIBUTES) of object ``object``; its JSON is ``asdict``."""

    object: int
    attribute: str


def _values(graph: SceneGraph, diff: TwinDiff) -> list[Any]:
    """Every value the attribute could take in this graph: colours but the background's, free cells."""
    if diff.attribute == "colour":
        return [c for c in COLOURS if c != graph.background.colour]
    if diff.attribute == "class":
        return list(CLASSES)
    if diff.attribute == "size":
        return list(SIZES)
    if diff.attribute == "orientation":
        return list(ORIENTATIONS)
    used = {o.cell for o in graph.others(diff.object)}
    return [c for c in range(CELLS) if c not in used]


def mutate(
    rng: np.random.Generator, graph: SceneGraph, diff: TwinDiff, pools: ClassPools | None, taken: Sequence[Any]
) -> SceneGraph:
    """``graph`` with a new value, none of ``taken``, for the attribute ``diff`` names.

    A new class draws a new photo from ``pools``; ``None``: text only, no picture is drawn from the graph."""
    values = [v for v in _values(graph, diff) if v not in taken]
    value = values[int(rng.integers(len(values)))]
    obj = graph.objects[diff.object]
    if diff.attribute == "cell":
        obj = obj.at_cell(value)
    elif diff.attribute == "class":
        obj = replace(obj, category=value)
        if pools is not None:
            obj = replace(obj, fmnist_index=pick_photo(rng, pools, value))
    else:
        obj = replace(obj, **{diff.attribute: value})
    return graph.with_object(diff.object, obj)


def near_twin_graph(meta: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The scene graph in ``meta`` with one attribute of one object changed: a near twin's facts, no image.

    The object and the attribute (colour, class, size, orientation or cell) are drawn from ``seed``, the new
    value as the test split's twins draw theirs. Returned as an item's meta holds a graph (``background``,
    ``objects``). Stage 1 uses its captions (``paraphrase_long``) as hard negatives: texts that differ from
    the scene's own in a single fact.
    """
    graph = SceneGraph.from_json(meta)
    rng = stream_rng(seed, NEAR_TWIN)
    k = int(rng.integers(len(graph.objects)))
    diff = TwinDiff(k, TWIN_ATTRIBUTES[int(rng.integers(len(TWIN_ATTRIBUTES)))])
    return mutate(rng, graph, diff, None, [graph.objects[k].attribute(diff.attribute)]).to_json()
