"""Building a FAISS index reproducibly and tuning its search parameter to a recall target.

Up to ``max_queries`` corpus vectors are held out of quantiser training and out of the index until tuning is
done (then added: they are corpus items), so that they are measured as a user's queries are: an HNSW graph
that holds a query hands it its own neighbours. Their exact top-10 among the other rows comes from brute
force. The candidate values of the index's one search parameter (IVF ``nprobe``, HNSW ``efSearch``) are
searched upwards, doubling, then by bisection, for the smallest whose recall@10 reaches the target with two standard errors to spare (so that other queries from the
same distribution reach it too, not half of the time); single-query latency is measured at that value.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from llm2clip.errors import BundleError, require_runtime

log = logging.getLogger(__name__)

K = 10  # recall@10: the service's default page of results
MIN_QUERIES = 20  # fewer held-out queries measure nothing: the parameter is set to its widest value instead
MIN_TRAIN = 16_384  # training points at least (PQ codebooks want 39 x 256), however few lists
ADD_CHUNK = 65_536
EF_LADDER = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
LATENCY_SECONDS = 2.0  # time spent measuring single-query latency at one value (at least MIN_QUERIES queries)


def faiss_module():
    faiss = require_runtime("faiss")

    # below this many queries FAISS skips BLAS; small batches are the service's normal case and BLAS is
    # ~10x faster there on this class of CPU (measured in DESIGN.md)
    faiss.cvar.distance_compute_blas_threshold = 16
    return faiss


def gpu_count() -> int:
    """GPUs this FAISS build can use (0 for faiss-cpu)."""
    faiss = faiss_module()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


@dataclass
class IndexBuildCfg:
    memory_budget_bytes: int | None = None  # the index's memory budget; None: a quarter of the machine's memory
    memory_mappable: bool = False  # choose an index FAISS can memory-map (IVF), for load_index(mmap=True)
    target_recall: float = 0.95  # recall@10 against exact search the tuned parameter must reach
    latency_budget_ms: float | None = None  # a single query's time may not exceed this (wins over the recall)
    max_queries: int = 1000  # held-out corpus vectors the recall is measured on (a tenth of the corpus at most)
    seed: int = 0  # the held-out and training samples and FAISS' k-means: the same input builds the same index
    device: str = "auto"  # auto: train and add on GPU 0 when FAISS has one and the index type allows; cpu
    train_points_per_list: int = 64  # k-means training points per inverted list (autofaiss: 30-256)

    def __post_init__(self) -> None:
        if not 0 < self.target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], not {self.target_recall}")
        if self.device not in ("auto", "cpu"):
            raise ValueError(f"device must be auto or cpu, not {self.device!r}")


def search_parameters(params: dict[str, Any]) -> Any:
    """FAISS SearchParameters for a manifest's ``search_params`` (None when there are none): passed per call,
    never set on a shared index."""
    faiss = faiss_module()
    if "efSearch" in params:
        return faiss.SearchParametersHNSW(efSearch=int(params["efSearch"]))
    if "nprobe" in params:
        sp = faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
        if "quantizer_efSearch" in params:  # an HNSW coarse quantizer must return nprobe lists
            sp.quantizer_params = faiss.SearchParametersHNSW(efSearch=int(params["quantizer_efSearch"]))
        return sp
    return None


def search(index: Any, queries: np.ndarray, k: int, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    sp = search_parameters(params)
    return index.search(queries, k, params=sp) if sp is not None else index.search(queries, k)


@dataclass
class Built:
    """A trained index holding every corpus row but the held-out queries, until ``add_held_out``."""

    index: Any  # a CPU index
    order: np.ndarray  # the corpus row each index row holds: the identity, or the held-out rows moved last
    query_rows: np.ndarray  # corpus rows held out of training and, until tuned, of the index
    train_rows: np.ndarray  # corpus rows the quantisers were trained on (none for HNSW and Flat)
    training: dict[str, Any]  # device, why, vectors trained on, seed

    def add_held_out(self, vectors: np.ndarray) -> None:
        """Adds the held-out rows once tuning is done: under their own ids in an IVF index, else at the end
        (``order`` says where)."""
        if not len(self.query_rows):
            return
        held = np.ascontiguousarray(vectors[self.query_rows])
        if _is_ivf(self.index):
            self.index.add_with_ids(held, self.query_rows.astype(np.int64))
        else:
            self.index.add(held)


def _is_ivf(index: Any) -> bool:
    return faiss_module().try_extract_index_ivf(index) is not None


def build_index(vectors: np.ndarray, factory: str, cfg: IndexBuildCfg) -> Built:
    """Train (on a seeded sample that excludes the held-out queries) and fill a ``factory`` index with every row
    but those queries, on GPU 0 when FAISS has one and the index type allows, else on the CPU; one log line says
    which and why. Tuning then measures recall on queries the index does not hold, as a user's are; an
    HNSW graph holding a query would hand it its own neighbours."""
    faiss = faiss_module()
    n, dim = vectors.shape
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(cfg.seed)
    n_queries = min(cfg.max_queries, n // 10)
    exact = isinstance(faiss.downcast_index(index), faiss.IndexFlat)
    query_rows = (np.sort(rng.choice(n, n_queries, replace=False)) if n_queries >= MIN_QUERIES and not exact
                  else np.empty(0, dtype=np.int64))
    rest = np.setdiff1d(np.arange(n), query_rows, assume_unique=True)
    _seed(faiss, index, cfg.seed)
    placed, device, why = _placement(faiss, index, factory, cfg.device)
    log.info("index %s: training and adding on the %s: %s", factory, device, why)
    train_rows = _train(faiss, placed, vectors, rest, (factory, rng, cfg))
    ivf = _is_ivf(index)
    for start in tqdm(range(0, len(rest), ADD_CHUNK), desc=f"add {factory}", unit="chunk",
                      disable=n < 4 * ADD_CHUNK):
        rows = rest[start:start + ADD_CHUNK]
        chunk = np.ascontiguousarray(vectors[rows])
        if ivf:  # IVF keeps each row's own id, so the held-out rows go back in place later
            placed.add_with_ids(chunk, rows.astype(np.int64))
        else:
            placed.add(chunk)
    if device == "gpu":
        index = faiss.index_gpu_to_cpu(placed)
    order = np.arange(n) if ivf or not len(query_rows) else np.concatenate([rest, query_rows])
    return Built(index, order, query_rows, train_rows,
                 {"device": device, "why": why, "vectors": len(train_rows), "seed": cfg.seed})


def _train(faiss: Any, index: Any, vectors: np.ndarray, pool: np.ndarray, how: tuple[str, Any, IndexBuildCfg]
           ) -> np.ndarray:
    """Trains ``index`` on a seeded sample of ``pool``: ``train_points_per_list`` a list, at least MIN_TRAIN
    (faiss' k-means would subsample beyond 256 a centroid anyway). Returns the rows trained on."""
    factory, rng, cfg = how
    if index.is_trained:
        return np.empty(0, dtype=np.int64)
    ivf = faiss.try_extract_index_ivf(index)
    nlist = int(ivf.nlist) if ivf is not None else 0
    if len(pool) < nlist:  # FAISS would stop with a RuntimeError that names neither the cause nor a cure
        raise BundleError(f"FAISS could not build {factory!r} for this corpus: {len(pool):,} training vectors (beside "
                          f"the held-out queries) for {nlist:,} clusters; use fewer lists or Flat")
    rows = np.sort(rng.choice(pool, min(len(pool), max(nlist * cfg.train_points_per_list, MIN_TRAIN)),
                              replace=False))
    t0 = time.perf_counter()
    index.train(np.ascontiguousarray(vectors[rows]))
    log.info("index %s: trained on %d vectors in %.1f s", factory, len(rows), time.perf_counter() - t0)
    return rows


def _seed(faiss: Any, index: Any, seed: int) -> None:
    """FAISS' k-means (coarse lists and PQ codebooks) sample and initialise from this seed."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        pq = getattr(faiss.downcast_index(ivf), "pq", None)
        if pq is not None:
            pq.cp.seed = seed


def _placement(faiss: Any, index: Any, factory: str, device: str) -> tuple[Any, str, str]:
    """(the index to train and add with, "gpu" or "cpu", why)."""
    if device == "cpu":
        return index, "cpu", "the CPU was asked for"
    gpus = gpu_count()
    if gpus == 0:
        return index, "cpu", "this FAISS build sees no GPU (faiss.get_num_gpus() is 0)"
    if "HNSW" in factory:
        return index, "cpu", "FAISS has no GPU version of HNSW graphs"
    if index.is_trained:
        return index, "cpu", "the index has nothing to train and adding only copies the vectors"
    try:
        moved = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except RuntimeError as exc:  # e.g. a PQ code size the GPU kernels lack
        return index, "cpu", f"FAISS cannot put {factory} on the GPU ({str(exc).strip().splitlines()[-1]})"
    return moved, "gpu", f"FAISS sees {gpus} GPU(s): GPU 0 trains and adds, the index is written from the CPU"


def _tunable(faiss: Any, index: Any) -> tuple[str | None, list[int], bool]:
    """(parameter name, candidate values in increasing order, HNSW coarse quantizer)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        nlist = int(ivf.nlist)
        ladder = sorted({v for p in range(nlist.bit_length() + 1) for v in (2 ** p, 3 * 2 ** p // 2)
                         if 1 <= v <= nlist} | {nlist})
        return "nprobe", ladder, isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return "efSearch", list(EF_LADDER), False
    return None, [], False


def _params(param: str | None, value: int | None, hnsw_coarse: bool) -> dict[str, Any]:
    if param is None or value is None:
        return {}
    if hnsw_coarse:
        return {param: value, "quantizer_efSearch": max(2 * value, 16)}
    return {param: value}


def _exact_ids(faiss: Any, vectors: np.ndarray, built: Built, queries: np.ndarray) -> np.ndarray:
    """Each query's exact top-K among the rows the index holds, as index row ids (-1: not known, when more than
    the margin of a query's nearest rows are other held-out queries, as duplicates can make them)."""
    margin = min(len(built.query_rows), 32)
    rows = faiss.knn(queries, vectors, K + margin, metric=faiss.METRIC_INNER_PRODUCT)[1]
    held = np.isin(rows, built.query_rows)
    first = np.argsort(held, axis=1, kind="stable")[:, :K]  # the rows the index holds, nearest first
    rows = np.where(np.take_along_axis(held, first, axis=1), -1, np.take_along_axis(rows, first, axis=1))
    ids = np.empty(len(built.order), dtype=np.int64)
    ids[built.order] = np.arange(len(built.order))
    return np.where(rows >= 0, ids[rows], -1)


def _per_query_recall(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Each query's share of its exact top-k found among its approximate top-k; unknown exact entries (-1) are
    not counted."""
    hits = ((found[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)).any(axis=1).sum(axis=1)
    return hits / np.maximum((exact >= 0).sum(axis=1), 1)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean recall@k over the queries (k = exact.shape[1])."""
    return float(_per_query_recall(found, exact).mean())


def ms_per_query(index: Any, queries: np.ndarray, params: dict[str, Any], k: int = K) -> float:
    """Mean milliseconds of one query searched alone (batch 1), over LATENCY_SECONDS or MIN_QUERIES queries."""
    search(index, queries[:1], k, params)  # warm: first touch of the lists and the caches
    done, t0 = 0, time.perf_counter()
    while done < len(queries) and (done < MIN_QUERIES or time.perf_counter() - t0 < LATENCY_SECONDS):
        search(index, queries[done:done + 1], k, params)
        done += 1
    return (time.perf_counter() - t0) * 1000 / max(done, 1)


def _bisect(lo: int, hi: int, ok: Any) -> int:
    """The smallest i in (lo, hi] with ok(i), given ok(hi) and ok monotone."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def _smallest_reaching(ladder: list[int], stats: Any, target: float) -> tuple[int, bool]:
    """(position in ``ladder`` of the smallest value whose recall reaches ``target`` with 2 standard errors to
    spare, reached); ``stats(value) -> (mean, lower bound)``. Doubles up from the smallest value, then bisects, so
    the widest (slowest) values are only tried when needed. When even the widest misses the target (a PQ index's
    codes cap its recall), the smallest value within a point of the widest's recall."""

    def ok(i: int) -> bool:
        return stats(ladder[i])[1] >= target

    lo, hi = -1, 0
    while not ok(hi) and hi < len(ladder) - 1:
        lo, hi = hi, min(len(ladder) - 1, 2 * hi + 1)
    if ok(hi):
        return _bisect(lo, hi, ok), True
    ceiling = stats(ladder[-1])[0] - 0.01
    return _bisect(-1, hi, lambda i: stats(ladder[i])[0] >= ceiling), False


def tune_index(built: Built, vectors: np.ndarray, cfg: IndexBuildCfg) -> tuple[dict[str, Any], dict[str, Any]]:
    """(search_params for the manifest, the manifest's ``tuning`` section) for an index built by ``build_index``,
    before ``add_held_out``."""
    faiss = faiss_module()
    index, query_rows = built.index, built.query_rows
    param, ladder, coarse = _tunable(faiss, index)
    queries = np.ascontiguousarray(vectors[query_rows] if len(query_rows) else vectors[:MIN_QUERIES])
    section: dict[str, Any] = {"target_recall": cfg.target_recall, "k": K, "queries": int(len(query_rows)),
                               "param": param, "value": None, "threads": int(faiss.omp_get_max_threads())}
    if isinstance(faiss.downcast_index(index), faiss.IndexFlat):
        section.update(recall_at_10=1.0, met_target=True, ms_per_query_b1=round(ms_per_query(index, queries, {}), 4),
                       note="exact search: recall@10 is 1.0 by construction, nothing to tune")
        return {}, section
    if len(query_rows) < MIN_QUERIES:
        params = _params(param, ladder[-1] if ladder else None, coarse)
        section.update(value=params.get(param) if param else None, recall_at_10=None, met_target=None,
                       ms_per_query_b1=round(ms_per_query(index, queries, params), 4),
                       note=f"fewer than {10 * MIN_QUERIES} vectors, too few to hold queries out: the widest value")
        return params, section
    exact = _exact_ids(faiss, vectors, built, queries)
    recalls: dict[int | None, tuple[float, float]] = {}

    def stats(value: int | None) -> tuple[float, float]:
        if value not in recalls:
            per_query = _per_query_recall(search(index, queries, K, _params(param, value, coarse))[1], exact)
            mean = float(per_query.mean())
            recalls[value] = (mean, mean - 2 * float(per_query.std()) / np.sqrt(len(per_query)))
            log.info("index tuning: %s=%s recall@10 %.4f", param, value, mean)
        return recalls[value]

    if param is None:  # e.g. a flat PQ or SQ index: nothing to trade, the recall is what it is
        recall = stats(None)[0]
        section.update(recall_at_10=round(recall, 4), met_target=recall >= cfg.target_recall,
                       ms_per_query_b1=round(ms_per_query(index, queries, {}), 4),
                       note="this index type has no search parameter to tune: its recall is measured")
        return {}, section
    pos, met = _smallest_reaching(ladder, stats, cfg.target_recall)
    pos, ms, within = _within_latency(index, queries, ladder, pos, (param, coarse, cfg.latency_budget_ms))
    value = ladder[pos]
    if not met or not within:
        log.warning("index tuning: %s=%d reaches recall@10 %.4f, short of the %.2f target (%s)", param, value,
                    stats(value)[0], cfg.target_recall, "the latency budget" if not within else "the index's ceiling")
    mean, lower = stats(value)
    section.update(value=value, recall_at_10=round(mean, 4), recall_at_10_lower=round(lower, 4),
                   met_target=met and within, ms_per_query_b1=round(ms, 4),
                   curve=[[v, round(r[0], 4)] for v, r in sorted(recalls.items())],
                   queries_from="corpus vectors held out of training and of the index while tuning",
                   rule="the smallest value whose recall@10, less 2 standard errors over the queries, reaches the "
                        "target")
    return _params(param, value, coarse), section


def _within_latency(index: Any, queries: np.ndarray, ladder: list[int], pos: int,
                    how: tuple[str, bool, float | None]) -> tuple[int, float, bool]:
    """(position, its ms per query at batch 1, within the budget): the largest value up to ``pos`` whose single
    query fits the latency budget, when the recall's choice does not."""
    param, coarse, budget = how
    times: dict[int, float] = {}

    def ms(i: int) -> float:
        if i not in times:
            times[i] = ms_per_query(index, queries, _params(param, ladder[i], coarse))
        return times[i]

    if budget is None or ms(pos) <= budget:
        return pos, ms(pos), True
    if ms(0) > budget:
        return 0, ms(0), False
    # the largest i with ms(i) <= budget: bisect on "too slow"
    slow = _bisect(0, pos, lambda i: ms(i) > budget)
    return slow - 1, ms(slow - 1), False


__all__ = ["K", "Built", "IndexBuildCfg", "build_index", "faiss_module", "gpu_count", "ms_per_query", "recall_at_k",
           "search", "search_parameters", "tune_index"]
