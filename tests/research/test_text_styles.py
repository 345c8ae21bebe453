"""research.text_styles: cross-style caption retrieval on the text side."""

from __future__ import annotations

import numpy as np

from research.text_styles import centred, cross_r1, through_bundle


def test_cross_r1_finds_the_matching_rows_and_counts_misses():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(50, 16))
    assert cross_r1(keys + 0.01 * rng.normal(size=keys.shape), keys) == 1.0
    shuffled = keys[np.r_[1:50, 0]]  # every query's own row is now another scene's
    assert cross_r1(shuffled, keys) == 0.0
    half = keys.copy()
    half[:25] = rng.normal(size=(25, 16))  # half the queries are unrelated: about half the hits
    assert 0.45 <= cross_r1(half, keys) <= 0.6


def test_a_shared_direction_does_not_decide_the_match():
    """Mean-pooled LLM states share a large common component; centring removes it before the cosine."""
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(40, 8))
    common = 100.0 * np.ones(8)
    queries = keys + 0.8 * rng.normal(size=keys.shape) + common
    shifted = keys + 0.5 * common

    def plain_cosine_r1(q: np.ndarray, k: np.ndarray) -> float:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        k = k / np.linalg.norm(k, axis=1, keepdims=True)
        return float(((q @ k.T).argmax(axis=1) == np.arange(len(q))).mean())

    assert cross_r1(queries, shifted) == cross_r1(queries - common, keys)  # the shared part is gone
    assert cross_r1(queries, shifted) > plain_cosine_r1(queries, shifted) + 0.2
    np.testing.assert_allclose(np.linalg.norm(centred(queries), axis=1), 1.0)


def test_through_a_bundle_each_caption_finds_itself_and_restyled_ones_are_scored(tiny_bundle, check_scenes, tmp_path):
    from llm2clip.data import read_dataset, restyle_corpus

    same = through_bundle(tiny_bundle, check_scenes, check_scenes)  # identical captions: each finds its own
    assert same["unseen_long_to_own_long_r1"] == 1.0 == same["unseen_long_to_own_long_r1_plain_cosine"]
    restyle_corpus(check_scenes, tmp_path / "unseen", seed=1, progress=False)
    other = through_bundle(tiny_bundle, check_scenes, tmp_path / "unseen")
    assert other["model"] == same["model"] and len(read_dataset(tmp_path / "unseen").items) == 24
    # a random tiny model on other words: some captions find their scene's, not all
    assert 0.0 <= other["unseen_long_to_own_long_r1"] < 1.0
