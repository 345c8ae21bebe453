"""From per-seed eval outputs to what ``research.stats`` tests: each metric's per-query hits and the twin-pair
cluster of each query.

Input: one row's eval results, one per seed, from ``training.eval.evaluate_per_query`` (or
``evaluate_encoders(..., per_query=True)``), all on the same test split. Metrics (``METRICS``):

- ``t2i_r{k}``, ``i2t_r{k}`` (long captions), ``short_t2i_r{k}``, ``short_i2t_r{k}``: one query per scene
  (its caption, or its image), a hit when the right answer ranks under k. The scene's cluster is its twin
  pair: twins are dependent, as one another's hardest distractor.
- ``twin_t2i``, ``twin_i2t``, ``twin_short_t2i``, ``twin_short_i2t``: one query per ordered twin pair (a, b),
  a hit when a's caption prefers a's image (t2i) or a's image prefers a's caption (i2t). (a, b) and (b, a)
  fall in the same cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from research.stats import Outcomes, StatsError

# the metrics the paper's claims are about (research.report's headline), with their table labels
HEADLINE = {"t2i_r1": "long t2i R@1", "i2t_r1": "long i2t R@1", "t2i_r5": "long t2i R@5",
            "twin_t2i": "twin t2i (long)", "twin_i2t": "twin i2t (long)",
            "short_t2i_r1": "short t2i R@1", "short_i2t_r1": "short i2t R@1"}
_RANKED = re.compile(r"(short_)?(t2i|i2t)_r([1-9][0-9]*)")
_TWIN = re.compile(r"twin_(short_)?(t2i|i2t)")
METRICS = ("t2i_r{k}, i2t_r{k}, short_t2i_r{k}, short_i2t_r{k}, twin_t2i, twin_i2t, twin_short_t2i, "
           "twin_short_i2t")


def clusters_from_pairs(n: int, pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Each of ``n`` scenes' cluster id: the smallest index among the scenes it is linked to by twin pairs
    (connected components, so three mutual twins are one cluster); a scene without a twin is alone."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        if not (0 <= a < n and 0 <= b < n):
            raise StatsError(f"twin pair ({a}, {b}) is outside the {n} scenes")
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)  # the smaller index stays the root: ids are readable
    return np.array([root(i) for i in range(n)], dtype=np.int64)


def pair_clusters(scene_clusters: np.ndarray, pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Each ordered twin pair's cluster: its scenes' (so (a, b) and (b, a) share one)."""
    return scene_clusters[[a for a, _ in pairs]]


def metric_outcomes(per_query: Sequence[Mapping[str, Any]], metric: str) -> Outcomes | None:
    """``metric``'s outcomes over the seeds' ``per_query`` blocks (see ``METRICS``); None for a twin metric
    on a split without twins."""
    first = per_query[0]
    n = len(first["ids"])
    scene_clusters = clusters_from_pairs(n, first["twin_pairs"])
    ranked, twin = _RANKED.fullmatch(metric), _TWIN.fullmatch(metric)
    if ranked:
        caption, direction, k = ("short" if ranked[1] else "long"), ranked[2], int(ranked[3])
        hits = [np.asarray(q["ranks"][caption][direction]) < k for q in per_query]
        return Outcomes(np.stack(hits), scene_clusters)
    if twin:
        if first["twin_hits"] is None:
            return None
        caption, direction = ("short" if twin[1] else "long"), twin[2]
        hits = [np.asarray(q["twin_hits"][caption][direction]) for q in per_query]
        return Outcomes(np.stack(hits), pair_clusters(scene_clusters, first["twin_pairs"]))
    raise StatsError(f"unknown metric {metric!r}: choose among {METRICS}")


def row_outcomes(evals: Sequence[Mapping[str, Any]],
                 metrics: Sequence[str] = tuple(HEADLINE)) -> dict[str, Outcomes]:
    """One row's outcomes per metric from its seeds' eval results, as ``stats.compare_rows`` takes them
    (``{row: row_outcomes(evals)}``). Twin metrics are left out on a split without twins."""
    if not evals:
        raise StatsError("no eval results: give one per seed")
    per_query = []
    for i, e in enumerate(evals):
        if not isinstance(e.get("per_query"), Mapping):
            raise StatsError(f"eval result {i} has no per-query outcomes: evaluate with "
                             "training.eval.evaluate_per_query")
        per_query.append(e["per_query"])
    first = per_query[0]
    for i, q in enumerate(per_query[1:], 1):
        if q["ids"] != first["ids"] or q["twin_pairs"] != first["twin_pairs"]:
            raise StatsError(f"eval result {i} was scored on another test split than result 0: pair the "
                             "seeds on one test split")
    out = {m: metric_outcomes(per_query, m) for m in metrics}
    return {m: o for m, o in out.items() if o is not None}


def seed_values(evals: Sequence[Mapping[str, Any]], metric: str) -> list[float]:
    """``metric`` of each seed from the eval results' summary numbers (no per-query outcomes needed), for
    ``stats.fmt_mean_sd``."""
    ranked, twin = _RANKED.fullmatch(metric), _TWIN.fullmatch(metric)
    if ranked:
        key = f"{ranked[2]}_r{ranked[3]}"
        return [float(e["short" if ranked[1] else "long"][key]) for e in evals]
    if twin:
        caption = "short" if twin[1] else "long"
        if any(not e.get("near_twin") for e in evals):
            raise StatsError(f"{metric}: an eval result has no near twins (not a test split with twins)")
        return [float(e["near_twin"][caption][twin[2]]) for e in evals]
    raise StatsError(f"unknown metric {metric!r}: choose among {METRICS}")
