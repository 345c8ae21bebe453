"""Rendering's refusals; the pixels themselves are checked against DATASET.md in test_scenes.py."""

from __future__ import annotations

import numpy as np
import pytest

from llm2clip.data.render import CANVAS, render_background, render_scene
from llm2clip.data.scene_graph import Background, SceneGraph, SceneObject
from llm2clip.errors import DatasetError


def test_a_graph_without_photos_has_no_picture():
    graph = SceneGraph(Background("red", "plain"), (SceneObject("bag", "blue", "small", "upright", "top", "left"),))
    with pytest.raises(DatasetError, match="no Fashion-MNIST photo"):
        render_scene(graph, np.zeros((1, 28, 28), np.uint8))


def test_an_empty_photo_leaves_the_background():
    graph = SceneGraph(
        Background("red", "checkered"), (SceneObject("bag", "blue", "large", "upright", "top", "left", 0),)
    )
    picture = render_scene(graph, np.zeros((1, 28, 28), np.uint8))
    assert picture.shape == (CANVAS, CANVAS, 3)
    assert np.array_equal(picture, render_background("red", "checkered").astype(np.uint8))


def test_unknown_texture_is_refused():
    with pytest.raises(DatasetError, match="unknown texture 'wavy'"):
        render_background("red", "wavy")
