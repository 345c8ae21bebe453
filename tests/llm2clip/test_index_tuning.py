"""Index builds tuned to a recall target on held-out queries, checked against brute force on fresh queries;
memory-mapped loading; the CPU/GPU choice at build time."""

from __future__ import annotations

import logging
import sqlite3

import numpy as np
import pytest

from llm2clip.errors import BundleError
from llm2clip.index import IndexBuildCfg, IndexWriter, Record, gpu_count, load_index
from llm2clip.index_tuning import MIN_TRAIN, K, build_index, faiss_module, recall_at_k

DIM = 32
N = 20_000


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """Unit vectors around cluster centres, each cluster with its own spread: embeddings look like this, not
    like uniform noise on the sphere."""
    which = rng.integers(0, len(centres), n)
    spread = rng.uniform(1.0, 2.0, len(centres))[which, None]
    x = centres[which] + spread * rng.normal(size=(n, centres.shape[1])) / np.sqrt(centres.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(50, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors, fresh = clustered(rng, centres, N), clustered(rng, centres, 1000)
    exact = np.argsort(-(fresh @ vectors.T), axis=1, kind="stable")[:, :K]
    return vectors, fresh, exact


def write(folder, vectors: np.ndarray, factory: str | None = None, cfg: IndexBuildCfg | None = None):
    writer = IndexWriter(folder, "image", vectors.shape[1], "f" * 64)
    writer.add(vectors, [Record(id=f"i{k}", uri=None, caption=None) for k in range(len(vectors))])
    return writer.write(factory=factory, cfg=cfg)


def corpus_rows(folder) -> np.ndarray:
    """The corpus position of each index row (an HNSW build moves its held-out rows last)."""
    with sqlite3.connect(folder / "items.sqlite") as db:
        pairs = db.execute("SELECT row, id FROM items ORDER BY row").fetchall()
    return np.array([int(item[1:]) for _, item in pairs])


def fresh_recall(folder, fresh: np.ndarray, exact: np.ndarray, params: dict | None = None) -> float:
    index = load_index(folder)
    try:
        return recall_at_k(corpus_rows(folder)[index.search(fresh, K, params)[1]], exact)
    finally:
        index.close()


@pytest.fixture(scope="module")
def ivf(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("ivf") / "bundle"
    return folder, write(folder, data[0], "IVF128,Flat")


def test_ivf_tuning_reaches_the_target_and_fresh_queries_confirm_it(ivf, data):
    folder, manifest = ivf
    _, fresh, exact = data
    tuning = manifest["tuning"]
    assert tuning["target_recall"] == 0.95 and tuning["k"] == 10 and tuning["queries"] == 1000
    assert tuning["param"] == "nprobe" and manifest["search_params"] == {"nprobe": tuning["value"]}
    assert tuning["recall_at_10"] >= 0.95 and tuning["met_target"] is True
    assert tuning["ms_per_query_b1"] > 0
    chooser = tuning["chooser"]
    assert "explicitly" in chooser["reason"] and chooser["estimated_bytes"] > N * DIM * 4
    assert chooser["memory_budget_bytes"] > 0
    # 1000 queries the build never saw, searched with the manifest's parameter (the call names none)
    measured = fresh_recall(folder, fresh, exact)
    assert measured == pytest.approx(tuning["recall_at_10"], abs=0.03)


def test_a_smaller_nprobe_misses_the_target(ivf, data):
    """The tuning is not vacuous: the value below the chosen one falls short, in the build's own measurement
    and on fresh queries."""
    folder, manifest = ivf
    _, fresh, exact = data
    value = manifest["tuning"]["value"]
    curve = dict(manifest["tuning"]["curve"])
    below = max(v for v in curve if v < value)
    assert value >= 8 and curve[below] < 0.95
    tuned = fresh_recall(folder, fresh, exact)
    assert fresh_recall(folder, fresh, exact, {"nprobe": below}) < tuned
    assert fresh_recall(folder, fresh, exact, {"nprobe": value // 4}) < 0.9


def test_mmap_loading_answers_exactly_as_normal_loading(ivf, data, caplog):
    folder, _ = ivf
    _, fresh, _ = data
    normal = load_index(folder)
    with caplog.at_level(logging.INFO, logger="llm2clip.index"):
        mapped = load_index(folder, mmap=True)
    assert "memory-mapped" in caplog.text
    for params in (None, {"nprobe": 1}, {"nprobe": 128}):
        s1, r1 = normal.search(fresh, K, params)
        s2, r2 = mapped.search(fresh, K, params)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(s1, s2)
    normal.close()
    mapped.close()


def test_mmap_of_a_flat_index_reads_it_normally(tmp_path, data, caplog):
    vectors, fresh, exact = data
    write(tmp_path / "flat", vectors[:2000])
    with caplog.at_level(logging.INFO, logger="llm2clip.index"):
        index = load_index(tmp_path / "flat", mmap=True)
    assert "mmap does not apply to IndexFlatIP" in caplog.text
    np.testing.assert_array_equal(index.search(fresh, K)[1], np.argsort(-(fresh @ vectors[:2000].T), axis=1,
                                                                         kind="stable")[:, :K])
    index.close()


def test_flat_is_exact_without_tuning(tmp_path, data):
    manifest = write(tmp_path / "flat", data[0][:5000])
    tuning = manifest["tuning"]
    assert manifest["factory"] == "Flat" and manifest["search_params"] == {}
    assert tuning["recall_at_10"] == 1.0 and tuning["param"] is None and "by construction" in tuning["note"]
    assert "exact search" in tuning["chooser"]["reason"]


def test_hnsw_tuning_reaches_the_target(tmp_path, data):
    vectors, fresh, exact = data
    manifest = write(tmp_path / "hnsw", vectors, "HNSW16,Flat")
    tuning = manifest["tuning"]
    assert manifest["search_params"] == {"efSearch": tuning["value"]} and tuning["recall_at_10"] >= 0.95
    assert fresh_recall(tmp_path / "hnsw", fresh, exact) == pytest.approx(tuning["recall_at_10"], abs=0.03)


def test_a_latency_budget_wins_over_the_recall_target(tmp_path, data):
    """No search takes a nanosecond: the budget forces the smallest nprobe and the manifest says the target was
    missed."""
    manifest = write(tmp_path / "ivf", data[0], "IVF128,Flat", IndexBuildCfg(latency_budget_ms=1e-6))
    tuning = manifest["tuning"]
    assert tuning["value"] == 1 and tuning["met_target"] is False and tuning["recall_at_10"] < 0.95


def test_an_unreachable_target_takes_the_knee_of_a_pq_index(tmp_path, data):
    """Four bytes a vector cap the recall below the target: the smallest nprobe within a point of the widest
    nprobe's recall, flagged as short of the target."""
    manifest = write(tmp_path / "pq", data[0], "IVF64,PQ4x8")
    tuning = manifest["tuning"]
    curve = dict(tuning["curve"])
    assert tuning["met_target"] is False and curve[64] < 0.95
    assert tuning["recall_at_10"] >= curve[64] - 0.01 and tuning["value"] < 64


def test_training_excludes_the_held_out_queries_and_is_reproducible(data):
    vectors = data[0]
    cfg = IndexBuildCfg(seed=3)
    a, b = build_index(vectors, "IVF128,Flat", cfg), build_index(vectors, "IVF128,Flat", cfg)
    assert len(a.query_rows) == 1000 and len(a.train_rows) == MIN_TRAIN  # 128 lists x 64 < MIN_TRAIN
    assert not set(a.query_rows) & set(a.train_rows)
    faiss = faiss_module()
    centroids = [faiss.extract_index_ivf(x.index).quantizer.reconstruct_n(0, 128) for x in (a, b)]
    np.testing.assert_array_equal(*centroids)
    other = build_index(vectors, "IVF128,Flat", IndexBuildCfg(seed=4))
    assert not np.array_equal(centroids[0], faiss.extract_index_ivf(other.index).quantizer.reconstruct_n(0, 128))


def test_the_build_logs_where_it_trains(data, caplog):
    with caplog.at_level(logging.INFO, logger="llm2clip.index_tuning"):
        built = build_index(data[0][:5000], "IVF16,Flat", IndexBuildCfg())
    if gpu_count() == 0:
        assert built.training["device"] == "cpu"
        assert "training and adding on the cpu: this FAISS build sees no GPU" in caplog.text
    else:
        assert "training and adding on the gpu" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llm2clip.index_tuning"):
        build_index(data[0][:5000], "IVF16,Flat", IndexBuildCfg(device="cpu"))
    assert "training and adding on the cpu: the CPU was asked for" in caplog.text


def test_an_explicit_factory_is_honoured(tmp_path, data):
    manifest = write(tmp_path / "ivf", data[0][:5000], "IVF32,Flat")
    index = load_index(tmp_path / "ivf")
    faiss = faiss_module()
    assert manifest["factory"] == "IVF32,Flat" and faiss.extract_index_ivf(index.index).nlist == 32
    assert manifest["tuning"]["param"] == "nprobe"  # and still tuned
    index.close()


def test_bad_builds_say_what_to_do(tmp_path, data):
    with pytest.raises(BundleError, match="not a FAISS index factory"):
        write(tmp_path / "bad", data[0][:100], "IVF12,Bogus")
    with pytest.raises(BundleError, match="900 training vectors .* for 4,096 clusters; use fewer lists"):
        write(tmp_path / "small", data[0][:1000], "IVF4096,Flat")
    assert not (tmp_path / "small").exists()
