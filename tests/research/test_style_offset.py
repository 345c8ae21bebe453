"""The style-offset diagnostic on made-up embeddings whose answer is known."""

from __future__ import annotations

import numpy as np

from research.style_offset import _unit, measure


def _scenes(seed: int, n: int = 200, dim: int = 32):
    rng = np.random.default_rng(seed)
    image = _unit(rng.normal(size=(n, dim)))
    own = _unit(image + 0.3 * rng.normal(size=(n, dim)))
    return rng, image, own


def test_a_common_offset_is_what_shifting_takes_back():
    rng, image, own = _scenes(0)
    common = 3.0 * _unit(rng.normal(size=(1, own.shape[1])))
    unseen = _unit(own + common)
    r = measure(image, own, unseen)
    assert r["plain"]["unseen"]["t2i_r1"] < 0.5 * r["plain"]["own"]["t2i_r1"]
    assert r["shifted"]["unseen"]["t2i_r1"] >= 0.9 * r["plain"]["own"]["t2i_r1"]
    assert r["unseen_to_own_caption_r1"]["shifted"] > r["unseen_to_own_caption_r1"]["plain"]
    assert r["offset_length"] > 0.5 > measure(image, own, own)["offset_length"]


def test_captions_that_lost_their_scene_are_not_taken_back_by_shifting():
    rng, image, own = _scenes(1)
    unseen = _unit(own[rng.permutation(len(own))] + 0.5)  # each caption on another scene, and an offset
    r = measure(image, own, unseen)
    assert r["plain"]["own"]["t2i_r1"] > 0.5
    assert r["shifted"]["unseen"]["t2i_r1"] < 0.05 and r["centred"]["unseen"]["t2i_r1"] < 0.05
