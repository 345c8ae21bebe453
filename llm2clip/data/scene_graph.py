"""Scene graphs: a background and up to six Fashion-MNIST items on a 3 x 3 grid, and their random draws.

A graph serialises to the ``background`` and ``objects`` of an item's ``meta`` (DATASET.md), keys in
the order they are drawn. Counts, classes, colours, sizes, orientations and textures are uniform;
cells are drawn without replacement; an object's colour is never the background's; colours may
repeat across objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40),
    "green": (50, 170, 70), "teal": (30, 150, 150), "blue": (40, 90, 220),
    "purple": (140, 60, 190), "pink": (240, 130, 180), "brown": (140, 90, 50),
    "white": (245, 245, 245), "grey": (128, 128, 128), "black": (25, 25, 25),
}
COLOURS = tuple(PALETTE)
# Fashion-MNIST label order
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
SIZES: dict[str, int] = {"small": 40, "medium": 64, "large": 96}  # side in pixels
TEXTURES = ("plain", "striped", "dotted", "checkered")
ORIENTATIONS = ("upright", "upside down", "mirrored")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
CELLS = len(ROWS) * len(COLS)
MAX_OBJECTS = 6
# what a near twin may change in one object; "cell" moves it to a free cell
TWIN_ATTRIBUTES = ("colour", "class", "size", "orientation", "cell")

ClassPools = list[np.ndarray]  # per class, the Fashion-MNIST photo indices a split draws from


@dataclass(frozen=True)
class Background:
    colour: str
    texture: str


@dataclass(frozen=True)
class SceneObject:
    category: str  # a Fashion-MNIST class; "class" in JSON
    colour: str
    size: str
    orientation: str
    row: str
    col: str
    # the photo it is drawn from; None for a graph that only captions are made of
    fmnist_index: int | None = None

    @property
    def cell(self) -> int:
        """0..8, row by row from the top left."""
        return ROWS.index(self.row) * len(COLS) + COLS.index(self.col)

    def at_cell(self, cell: int) -> SceneObject:
        return replace(self, row=ROWS[cell // len(COLS)], col=COLS[cell % len(COLS)])

    def attribute(self, name: str) -> str | int:
        """The value a near twin changes: one of TWIN_ATTRIBUTES."""
        if name == "cell":
            return self.cell
        return getattr(self, "category" if name == "class" else name)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "class": self.category,
            "colour": self.colour,
            "size": self.size,
            "orientation": self.orientation,
            "row": self.row,
            "col": self.col,
        }
        if self.fmnist_index is not None:
            out["fmnist_index"] = self.fmnist_index
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SceneObject:
        return cls(
            category=obj["class"],
            colour=obj["colour"],
            size=obj["size"],
            orientation=obj["orientation"],
            row=obj["row"],
            col=obj["col"],
            fmnist_index=obj.get("fmnist_index"),
        )


@dataclass(frozen=True)
class SceneGraph:
    background: Background
    objects: tuple[SceneObject, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``background`` and ``objects`` of an item's meta."""
        return {"background": asdict(self.background), "objects": [o.to_json() for o in self.objects]}

    @classmethod
    def from_json(cls, meta: Mapping[str, Any]) -> SceneGraph:
        """The graph in an item's meta (other keys are ignored)."""
        bg = meta["background"]
        return cls(Background(bg["colour"], bg["texture"]), tuple(SceneObject.from_json(o) for o in meta["objects"]))

    def others(self, k: int) -> list[SceneObject]:
        """Every object but object ``k``: what a referring expression for ``k`` must not fit."""
        return [o for j, o in enumerate(self.objects) if j != k]

    def with_object(self, k: int, obj: SceneObject) -> SceneGraph:
        return replace(self, objects=(*self.objects[:k], obj, *self.objects[k + 1 :]))


def relation(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` lies relative to ``b``, from their cells ("directly above", "below and to the left of")."""
    dr = ROWS.index(a.row) - ROWS.index(b.row)
    dc = COLS.index(a.col) - COLS.index(b.col)
    vertical = "above" if dr < 0 else "below" if dr > 0 else ""
    horizontal = "to the left of" if dc < 0 else "to the right of" if dc > 0 else ""
    if not vertical:
        return f"directly {horizontal}"
    if not horizontal:
        return f"directly {vertical}"
    return f"{vertical} and {horizontal}"


# ---------------------------------------------------------------- random draws
# The order of the draws below is part of the corpus: another order gives other scenes for a seed.


def pick_photo(rng: np.random.Generator, pools: ClassPools, category: str) -> int:
    pool = pools[CLASSES.index(category)]
    return int(pool[int(rng.integers(len(pool)))])


def draw_object(rng: np.random.Generator, pools: ClassPools, bg_colour: str, cell: int) -> SceneObject:
    category = CLASSES[int(rng.integers(len(CLASSES)))]
    colours = [c for c in COLOURS if c != bg_colour]
    colour = colours[int(rng.integers(len(colours)))]
    size = tuple(SIZES)[int(rng.integers(len(SIZES)))]
    orientation = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    obj = SceneObject(category, colour, size, orientation, ROWS[0], COLS[0], pick_photo(rng, pools, category))
    return obj.at_cell(cell)


def draw_scene(rng: np.random.Generator, pools: ClassPools, lo: int, hi: int) -> SceneGraph:
    """A background and ``lo``..``hi`` objects in distinct cells."""
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    count = int(rng.integers(lo, hi + 1))
    cells = rng.choice(CELLS, size=count, replace=False)
    return SceneGraph(Background(colour, texture), tuple(draw_object(rng, pools, colour, int(c)) for c in cells))
