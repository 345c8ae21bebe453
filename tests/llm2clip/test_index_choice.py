"""The index chooser: Flat while exact search is cheap, HNSW or IVF while the full vectors fit the memory budget,
OPQ + IVF-PQ when they do not; its size estimates agree with what FAISS writes."""

from __future__ import annotations

import numpy as np
import pytest

from llm2clip.index import check_factory
from llm2clip.index_choice import (
    DEFAULT_MEMORY_FRACTION,
    MemoryBudgetError,
    choose_index,
    estimate_bytes,
    memory_budget,
    nlist_for,
    physical_memory_bytes,
)
from llm2clip.index_tuning import faiss_module

GiB = 1 << 30
MiB = 1 << 20


def test_small_corpora_get_exact_search():
    choice = choose_index(50_000, 256, GiB)
    assert choice.factory == "Flat" and choice.estimated_bytes == 50_000 * 256 * 4
    assert choice.memory_budget_bytes == GiB and "exact" in choice.reason
    # the threshold is floats scanned per query: wider vectors leave Flat sooner
    assert choose_index(200_000, 256, 4 * GiB).factory == "Flat"
    assert choose_index(200_000, 1024, 4 * GiB).factory != "Flat"


def test_hnsw_while_vectors_and_graph_fit():
    choice = choose_index(1_000_000, 256, 4 * GiB)
    assert choice.factory == "HNSW32,Flat"
    assert choice.estimated_bytes <= 4 * GiB and "HNSW" in choice.reason
    # a tighter budget keeps HNSW with fewer links while 8 or more fit
    tight = choose_index(1_000_000, 256, 1_000_000 * (256 * 4 + 12 + 8 * 16))
    assert tight.factory == "HNSW16,Flat" and tight.estimated_bytes <= tight.memory_budget_bytes


def test_ivf_flat_when_only_the_vectors_fit_or_mmap_is_wanted():
    choice = choose_index(1_000_000, 256, GiB)
    assert choice.factory == "IVF4096,Flat" and choice.estimated_bytes <= GiB
    mappable = choose_index(1_000_000, 256, 4 * GiB, memory_mappable=True)
    assert mappable.factory == "IVF4096,Flat" and "memory-mappable" in mappable.reason


def test_opq_ivf_pq_when_the_vectors_do_not_fit():
    choice = choose_index(1_000_000, 256, 256 * MiB)
    assert choice.factory.startswith("OPQ") and ",IVF4096," in choice.factory and choice.factory.endswith("x8")
    assert choice.estimated_bytes <= 256 * MiB and "exceed" in choice.reason
    check_factory(choice.factory, 256)  # FAISS can build it
    # less memory, shorter codes
    smaller = choose_index(1_000_000, 256, 64 * MiB)
    assert smaller.estimated_bytes < choice.estimated_bytes and smaller.estimated_bytes <= 64 * MiB
    # many lists: the coarse quantizer is an HNSW graph
    huge = choose_index(20_000_000, 256, 4 * GiB)
    assert "_HNSW32,PQ" in huge.factory
    check_factory(huge.factory, 256)


def test_over_budget_but_too_few_rows_for_pq_stays_flat():
    choice = choose_index(5_000, 256, MiB)
    assert choice.factory == "Flat" and choice.estimated_bytes > MiB and "budget" in choice.reason


def test_nlist_rule():
    assert nlist_for(1_000_000) == 4096  # 4 * sqrt(n) = 4000
    assert nlist_for(100_000) == 1024  # 1265 rounds to 2^10
    assert nlist_for(10_000) == 256  # 512 would leave fewer than 39 training points a list


def test_memory_budget_default_and_explicit():
    assert memory_budget() == int(physical_memory_bytes() * DEFAULT_MEMORY_FRACTION)
    assert memory_budget(123_456_789) == 123_456_789
    for bad in (0, -5, 1.5, "8G", True):
        with pytest.raises(MemoryBudgetError):
            memory_budget(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("factory", ["Flat", "HNSW16,Flat", "IVF64,Flat", "IVF64,PQ8x8",
                                     "IVF64_HNSW32,Flat"])
def test_estimates_agree_with_the_written_index(factory):
    faiss = faiss_module()
    n, dim = 12_000, 32
    x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    written = len(faiss.serialize_index(index))
    assert estimate_bytes(factory, n, dim) == pytest.approx(written, rel=0.15)


def test_unknown_factories_are_not_estimated():
    assert estimate_bytes("IVF64,SQ8", 1000, 32) is None
