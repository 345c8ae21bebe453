"""Drift of IVF indexes under adds, on real FAISS indexes of clustered unit vectors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index_builder.drift import GROWTH_MAX, IMBALANCE_RATIO_MAX, RESIDUAL_RATIO_MAX, imbalance, measure_drift

DIM = 32


def clustered(rng: np.random.Generator, centers: np.ndarray, per: int, which: list[int] | None = None) -> np.ndarray:
    which = which if which is not None else list(range(len(centers)))
    x = np.concatenate([centers[c] + 0.05 * rng.normal(size=(per, DIM)) for c in which]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def trained(factory: str, x: np.ndarray):
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    return index


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "HNSW8,Flat"])
def test_indexes_without_training_have_no_drift(factory, rng):
    assert measure_drift(trained(factory, unit(rng, 50)), unit(rng, 5)) is None


@pytest.mark.parametrize("factory", ["IVF4,Flat", "PCA16,IVF4,PQ4"])
def test_like_the_trained_rows_or_not(factory, rng):
    """Same clusters: distances as the trained rows'; random directions: far from every centroid. Through vector
    transforms and PQ codes too."""
    centers = unit(rng, 4)
    index = trained(factory, clustered(rng, centers, 100))
    same = measure_drift(index, clustered(rng, centers, 25))
    assert same["needs_retrain"] is False and same["reason"] is None
    assert 0.8 < same["residual_ratio"] < 1.25 and same["imbalance_ratio"] < 1.2
    assert same["trained"]["rows"] == 400 and same["growth"] == pytest.approx(1.25)
    odd = measure_drift(index, unit(rng, 20))
    assert odd["needs_retrain"] is True and odd["residual_ratio"] > 3 * RESIDUAL_RATIO_MAX
    assert odd["reason"].startswith("added rows lie") and "uneven" not in odd["reason"]


def test_lopsided_growth_and_sticky_verdict(rng):
    centers = unit(rng, 16)
    index = trained("IVF16,Flat", clustered(rng, centers, 50))
    before = measure_drift(index, np.zeros((0, DIM), np.float32))
    assert before["needs_retrain"] is False and before["trained"]["imbalance"] < 1.5
    # 400 more rows, all in one cluster: each like the trained ones, but one list 9x the others
    pile = clustered(rng, centers, 400, which=[0])
    drift = measure_drift(index, pile, before)
    assert drift["residual_ratio"] < RESIDUAL_RATIO_MAX and drift["growth"] == pytest.approx(1.5)
    assert drift["imbalance_ratio"] > IMBALANCE_RATIO_MAX and drift["needs_retrain"] is True
    assert "uneven" in drift["reason"] and "trained on" not in drift["reason"]
    index.add(pile)
    # a later, harmless add does not clear it: the rows that caused it are still there
    later = measure_drift(index, clustered(rng, centers, 1), drift)
    assert later["needs_retrain"] is True and later["trained"] == before["trained"] and later["added_rows"] == 416


def test_growth_alone(rng):
    centers = unit(rng, 4)
    index = trained("IVF4,Flat", clustered(rng, centers, 50))
    drift = measure_drift(index, clustered(rng, centers, 60))
    assert drift["growth"] == pytest.approx(2.2) and drift["growth"] > GROWTH_MAX
    assert drift["reason"] == f"440 rows, 2.20x the 200 it was trained on (limit {GROWTH_MAX})"


def test_imbalance_factor():
    assert imbalance(np.array([5, 5, 5, 5])) == 1.0
    assert imbalance(np.array([20, 0, 0, 0])) == 4.0
    assert imbalance(np.array([0, 0])) == 1.0
