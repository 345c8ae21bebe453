"""A scene graph's picture, as DATASET.md draws it, so that another generator can reproduce the pixels.

In this order: the background (stripes start with the full colour at y = 0; dot centres at 8 + 16 i,
a pixel is in a dot when its squared distance to a centre is <= 9; the 16 px square at the top left
has the full colour; "70%" is ``round(0.7 * channel)``); then each object in ``objects`` order: flip
the 28 x 28 image (``upside down``: rows, ``mirrored``: columns), resize it with PIL's bilinear
filter to its size, place its top-left corner at ``floor(centre - size / 2 + 0.5)`` with the cell
centre at ``(index + 0.5) * 224 / 3``, clip it to the canvas and composite
``out = a * (a * colour) + (1 - a) * out`` with ``a = intensity / 255``, in float; the canvas is
rounded to uint8 once, at the end. A large item (96 px) is wider than its cell (74.67 px), so it
reaches into the neighbouring cells and, in an edge cell, past the canvas edge; DATASET.md fixes
both sizes, so we keep them and clip.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from llm2clip.data.scene_graph import COLS, PALETTE, ROWS, SIZES, TEXTURES, SceneGraph, SceneObject
from llm2clip.errors import DatasetError

CANVAS = 224
CELL = CANVAS / 3
DARK = 0.7  # the darker shade of a textured background


def _dark(colour: Sequence[int]) -> np.ndarray:
    return np.round(np.asarray(colour, dtype=np.float64) * DARK)


def render_background(colour: str, texture: str) -> np.ndarray:
    """The (224, 224, 3) float64 background of DATASET.md."""
    base = np.asarray(PALETTE[colour], dtype=np.float64)
    canvas = np.empty((CANVAS, CANVAS, 3), dtype=np.float64)
    canvas[:] = base
    y, x = np.mgrid[0:CANVAS, 0:CANVAS]
    if texture == "striped":
        mask = (y // 8) % 2 == 1
    elif texture == "dotted":
        dy, dx = (y % 16) - 8, (x % 16) - 8
        mask = dy * dy + dx * dx <= 9
    elif texture == "checkered":
        mask = ((y // 16) + (x // 16)) % 2 == 1
    elif texture == "plain":
        return canvas
    else:
        raise DatasetError(f"unknown texture {texture!r}: expected one of {', '.join(TEXTURES)}")
    canvas[mask] = _dark(PALETTE[colour])
    return canvas


def object_intensity(image28: np.ndarray, size: str, orientation: str) -> np.ndarray:
    """The item's intensity (uint8, size x size): flipped, then resized bilinearly."""
    img = image28
    if orientation == "upside down":
        img = img[::-1, :]
    elif orientation == "mirrored":
        img = img[:, ::-1]
    px = SIZES[size]
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((px, px), Image.Resampling.BILINEAR))


def object_box(row: int, col: int, size: str) -> tuple[int, int]:
    """Top-left (y, x) of an item centred in its cell; may lie outside the canvas for large items."""
    half = SIZES[size] / 2
    return (int(np.floor((row + 0.5) * CELL - half + 0.5)), int(np.floor((col + 0.5) * CELL - half + 0.5)))


def _paint(canvas: np.ndarray, obj: SceneObject, photo: np.ndarray) -> None:
    a = object_intensity(photo, obj.size, obj.orientation) / 255.0
    y0, x0 = object_box(ROWS.index(obj.row), COLS.index(obj.col), obj.size)
    px = a.shape[0]
    # clip the item's box to the canvas: large items in edge cells stick out
    sy, sx = max(0, -y0), max(0, -x0)
    ey, ex = min(px, CANVAS - y0), min(px, CANVAS - x0)
    a = a[sy:ey, sx:ex, None]
    region = canvas[y0 + sy : y0 + ey, x0 + sx : x0 + ex]
    colour = np.asarray(PALETTE[obj.colour], dtype=np.float64)
    region[:] = a * (a * colour) + (1.0 - a) * region


def render_scene(graph: SceneGraph, images: np.ndarray) -> np.ndarray:
    """The (224, 224, 3) uint8 picture of a scene graph; ``images`` holds the Fashion-MNIST photos."""
    canvas = render_background(graph.background.colour, graph.background.texture)
    for obj in graph.objects:
        if obj.fmnist_index is None:
            raise DatasetError(f"{obj} names no Fashion-MNIST photo: a graph without photos has no picture")
        _paint(canvas, obj, images[obj.fmnist_index])
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
