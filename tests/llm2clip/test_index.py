"""Index bundles with approximate FAISS indexes: the search-time parameters (IVF nprobe, HNSW efSearch)
reach FAISS per call and trade recall as they should."""

from __future__ import annotations

import numpy as np
import pytest

from llm2clip.index import IndexWriter, Record, load_index

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    vectors, queries = unit(rng, 2000), unit(rng, 200)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")
    return vectors, queries, exact


def write(folder, vectors: np.ndarray, factory: str):
    writer = IndexWriter(folder, "image", DIM, "f" * 64)
    writer.add(vectors, [Record(id=f"i{k}", uri=None, caption=None) for k in range(len(vectors))])
    writer.write(factory=factory)
    return load_index(folder)


def recall_at_1(rows: np.ndarray, exact: np.ndarray) -> float:
    return float((rows[:, 0] == exact[:, 0]).mean())


def test_ivf_nprobe_reaches_faiss_per_call(tmp_path, data):
    vectors, queries, exact = data
    index = write(tmp_path / "ivf", vectors, "IVF16,Flat")
    assert index.manifest["factory"] == "IVF16,Flat" and index.manifest["search_params"] == {}
    _, all_lists = index.search(queries, 5, {"nprobe": 16})
    _, one_list = index.search(queries, 5, {"nprobe": 1})
    _, default = index.search(queries, 5)
    # every list searched: exactly the brute-force ranking
    np.testing.assert_array_equal(all_lists, exact[:, :5])
    # one list of sixteen misses some nearest neighbours; FAISS's own default nprobe is 1
    assert recall_at_1(one_list, exact) < 0.9
    np.testing.assert_array_equal(default, one_list)
    # the parameter was the call's, not set on the shared index
    assert index.index.nprobe == 1
    index.close()


def test_hnsw_ef_search_from_the_manifest_or_the_call(tmp_path, data):
    vectors, queries, exact = data
    index = write(tmp_path / "hnsw", vectors, "HNSW4,Flat")
    assert index.manifest["search_params"] == {"efSearch": 128}
    _, default = index.search(queries, 1)
    _, wide = index.search(queries, 1, {"efSearch": 128})
    _, narrow = index.search(queries, 1, {"efSearch": 1})
    np.testing.assert_array_equal(default, wide)  # the manifest's efSearch applies when the call names none
    assert recall_at_1(wide, exact) >= 0.98
    assert recall_at_1(narrow, exact) < recall_at_1(wide, exact) - 0.1
    index.close()
