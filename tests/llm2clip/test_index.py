"""Index bundles with approximate FAISS indexes: the search-time parameters (IVF nprobe, HNSW efSearch)
reach FAISS per call and trade recall as they should; the manifest's tuned value applies when a call names
none."""

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


def in_corpus_order(index, rows: np.ndarray) -> np.ndarray:
    """Index rows -> corpus positions: an HNSW build adds the queries it tunes on last."""
    return np.array([[int(index.records([r])[0].id[1:]) for r in row] for row in rows])


def recall_at_1(rows: np.ndarray, exact: np.ndarray) -> float:
    return float((rows[:, 0] == exact[:, 0]).mean())


def test_ivf_nprobe_reaches_faiss_per_call(tmp_path, data):
    vectors, queries, exact = data
    index = write(tmp_path / "ivf", vectors, "IVF16,Flat")
    tuned = index.manifest["search_params"]["nprobe"]
    assert index.manifest["factory"] == "IVF16,Flat" and 1 < tuned <= 16
    _, all_lists = index.search(queries, 5, {"nprobe": 16})
    _, one_list = index.search(queries, 5, {"nprobe": 1})
    _, default = index.search(queries, 5)
    _, at_tuned = index.search(queries, 5, {"nprobe": tuned})
    # every list searched: exactly the brute-force ranking
    np.testing.assert_array_equal(all_lists, exact[:, :5])
    # one list of sixteen misses some nearest neighbours
    assert recall_at_1(one_list, exact) < 0.9
    # the manifest's tuned nprobe applies when the call names none
    np.testing.assert_array_equal(default, at_tuned)
    # the parameter was the call's, not set on the shared index (FAISS's own default nprobe is 1)
    assert index.index.nprobe == 1
    index.close()


def test_hnsw_ef_search_from_the_manifest_or_the_call(tmp_path, data):
    vectors, queries, exact = data
    index = write(tmp_path / "hnsw", vectors, "HNSW4,Flat")
    ef = index.manifest["search_params"]["efSearch"]
    assert index.manifest["tuning"]["param"] == "efSearch" and index.manifest["tuning"]["value"] == ef
    _, default = index.search(queries, 1)
    _, at_tuned = index.search(queries, 1, {"efSearch": ef})
    wide = in_corpus_order(index, index.search(queries, 1, {"efSearch": 128})[1])
    narrow = in_corpus_order(index, index.search(queries, 1, {"efSearch": 1})[1])
    np.testing.assert_array_equal(default, at_tuned)  # the manifest's efSearch applies when the call names none
    assert recall_at_1(wide, exact) >= 0.98
    assert recall_at_1(narrow, exact) < recall_at_1(wide, exact) - 0.1
    index.close()
