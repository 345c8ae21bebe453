"""research.cell_probe: per-cell features and the ridge probe that reads object attributes from them."""

from __future__ import annotations

import numpy as np
import pytest

from llm2clip.data import generate_scenes
from research import cell_probe as cp


def test_cell_masks_split_a_feature_grid_into_the_scene_rows():
    masks = cp.cell_masks(16)  # DINOv2 at 224 px: 16 x 16 patches of 14 px, rows of 74.7 px
    assert [int(m.sum()) for m in masks] == [5, 6, 5] and np.logical_or.reduce(masks).all()
    assert not (masks[0] & masks[1]).any()


def test_the_probe_reads_a_linearly_kept_attribute_and_not_a_lost_one():
    rng = np.random.default_rng(0)
    labels = [str(v) for v in rng.integers(0, 3, 600)]
    kept = np.eye(3)[[int(v) for v in labels]] + 0.1 * rng.normal(size=(600, 3))
    lost = rng.normal(size=(600, 3))
    fit = np.arange(600) < 450
    assert cp.ridge_probe(kept, labels, fit)["accuracy"] > 0.95
    chance = cp.ridge_probe(lost, labels, fit)
    assert chance["accuracy"] < chance["majority"] + 0.1


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return generate_scenes(tmp_path_factory.mktemp("probe") / "train", 6, "train", 0, progress=False)


def test_an_object_is_pooled_from_its_own_cell(scenes):
    cells = cp.object_cells(scenes, 6)
    assert len(cells) == sum(len(it.meta["objects"]) for it in scenes.items)
    grid = 16
    maps = np.zeros((6, grid, grid, 1), np.float32)
    masks = cp.cell_masks(grid)
    i, r, c, _ = cells[0]
    maps[i][np.ix_(masks[r], masks[c])] = 1.0  # only the first object's cell is lit
    pooled = cp.pooled(maps, cells)[:, 0]
    assert pooled[0] == 1.0 and np.count_nonzero(pooled) == 1
    pixels = cp.pixel_features(scenes, 6, cells)
    assert pixels.shape == (len(cells), cp.PIXEL_SIDE * cp.PIXEL_SIDE * 3) and 0 <= pixels.min() <= pixels.max() <= 1


@pytest.mark.slow
def test_dinov2_maps_are_layer_normalised_patch_grids_that_change_with_depth(scenes):
    maps = cp.dinov2_maps(scenes, 2, [1, 12])
    assert set(maps) == {1, 12} and maps[12].shape == (2, 16, 16, 384)
    assert np.allclose(maps[12].mean(-1), 0, atol=1e-3) and np.allclose(maps[12].std(-1), 1, atol=0.05)
    assert not np.allclose(maps[1], maps[12], atol=0.1)
