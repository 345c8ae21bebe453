"""Drift of an IVF index under incremental adds: when its trained centroids no longer describe its rows.

An IVF index is trained once, at build: k-means centroids of the vectors it was built from, one inverted list
each. Rows added later go to the list of their nearest centroid whatever they look like. Items of a new kind
sit far from every centroid (searches of them rank worse at the same ``nprobe``), and growth piles rows into a
few lists (searches of those cost more). Each add measures both against what the index was trained on, and
marks the manifest when a rebuild (retraining) is due:

- ``residual_ratio``: mean squared distance of the added rows to their centroid, over that of a sample of the
  trained rows. About 1 when new items look like the old; above ``RESIDUAL_RATIO_MAX`` they do not.
- ``imbalance_ratio``: FAISS's list-size imbalance factor (``nlist * sum(size^2) / rows^2``; 1 means even
  lists) now, over the trained one; above ``IMBALANCE_RATIO_MAX``.
- ``growth``: rows now over the rows the centroids were trained on; above ``GROWTH_MAX``.

Distances are taken where the IVF works: after the index's vector transforms (OPQ, PCA) when it has any, and on
the stored (for PQ: reconstructed) vectors of the trained sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llm2clip.errors import require_runtime

RESIDUAL_RATIO_MAX = 1.5
IMBALANCE_RATIO_MAX = 2.0
GROWTH_MAX = 2.0
SAMPLE = 4096  # trained rows the baseline distance is measured on: enough for a stable mean, cheap to read


def ivf_of(index: Any) -> Any | None:
    """The IVF inside ``index`` (itself, or behind vector transforms), None for Flat, HNSW and other indexes."""
    return require_runtime("faiss").try_extract_index_ivf(index)


def _to_ivf_space(index: Any, x: np.ndarray) -> np.ndarray:
    faiss = require_runtime("faiss")
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            x = faiss.downcast_VectorTransform(index.chain.at(i)).apply(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def _list_sizes(ivf: Any) -> np.ndarray:
    return np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)


def imbalance(sizes: np.ndarray) -> float:
    """FAISS's imbalance factor of inverted list sizes: 1 for even lists, ``nlist`` for one full list."""
    total = float(sizes.sum())
    return float(len(sizes) * float((sizes.astype(np.float64) ** 2).sum()) / (total * total)) if total else 1.0


def _trained_residual(ivf: Any, centroids: np.ndarray, sizes: np.ndarray, seed: int = 0) -> float | None:
    """Mean squared distance of a sample of the stored rows to the centroid of their list; None when the index
    type cannot give its rows back."""
    faiss = require_runtime("faiss")
    total = int(sizes.sum())
    if total == 0:
        return None
    pos = np.sort(np.random.default_rng(seed).choice(total, size=min(SAMPLE, total), replace=False))
    ends = np.cumsum(sizes)
    lists = np.searchsorted(ends, pos, side="right")
    offsets = pos - (ends[lists] - sizes[lists])
    rows = np.empty((len(pos), ivf.d), np.float32)
    try:
        for j, (lst, off) in enumerate(zip(lists, offsets, strict=True)):
            ivf.reconstruct_from_offset(int(lst), int(off), faiss.swig_ptr(rows[j]))
    except RuntimeError:  # an IVF type without reconstruction
        return None
    return float(((rows - centroids[lists]) ** 2).sum(1).mean())


def measure_drift(index: Any, vectors: np.ndarray, previous: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest's ``drift`` section after adding ``vectors`` to ``index`` (call before ``index.add``); None
    for an index that is not IVF. ``previous``: the section of the last add, which holds the trained baseline
    (measured on the first add, while every row is a trained one) and the added rows so far."""
    ivf = ivf_of(index)
    if ivf is None:
        return None
    prev = previous or {}
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    sizes = _list_sizes(ivf)
    trained = prev.get("trained") or {"rows": int(sizes.sum()), "residual": _trained_residual(ivf, centroids, sizes),
                                      "imbalance": round(imbalance(sizes), 6)}
    x = _to_ivf_space(index, np.ascontiguousarray(vectors, dtype=np.float32))
    _, nearest = ivf.quantizer.search(x, 1)
    nearest = nearest[:, 0]
    added_rows = int(prev.get("added_rows", 0)) + len(x)
    residual_sum = float(prev.get("added_residual_sum", 0.0)) + float(((x - centroids[nearest]) ** 2).sum())
    after = sizes + np.bincount(nearest, minlength=ivf.nlist)
    growth = float(after.sum()) / max(int(trained["rows"]), 1)
    imb_ratio = imbalance(after) / float(trained["imbalance"])
    res_ratio = (residual_sum / added_rows / trained["residual"]
                 if trained["residual"] and added_rows else None)
    reasons = []
    if res_ratio is not None and res_ratio > RESIDUAL_RATIO_MAX:
        reasons.append(f"added rows lie {res_ratio:.2f}x as far from their centroids as the trained ones "
                       f"(limit {RESIDUAL_RATIO_MAX})")
    if imb_ratio > IMBALANCE_RATIO_MAX:
        reasons.append(f"list sizes are {imb_ratio:.2f}x as uneven as when trained (limit {IMBALANCE_RATIO_MAX})")
    if growth > GROWTH_MAX:
        reasons.append(f"{int(after.sum())} rows, {growth:.2f}x the {trained['rows']} it was trained on "
                       f"(limit {GROWTH_MAX})")
    # once due, a rebuild stays due: the rows that caused it are still in the lists
    needs = bool(reasons) or bool(prev.get("needs_retrain"))
    return {
        "needs_retrain": needs,
        "reason": "; ".join(reasons) or (prev.get("reason") if needs else None),
        "residual_ratio": None if res_ratio is None else round(res_ratio, 4),
        "imbalance_ratio": round(imb_ratio, 4),
        "growth": round(growth, 4),
        "rows": int(after.sum()),
        "trained": trained,
        "added_rows": added_rows,
        "added_residual_sum": residual_sum,
        "thresholds": {"residual_ratio": RESIDUAL_RATIO_MAX, "imbalance_ratio": IMBALANCE_RATIO_MAX,
                       "growth": GROWTH_MAX},
    }


__all__ = ["GROWTH_MAX", "IMBALANCE_RATIO_MAX", "RESIDUAL_RATIO_MAX", "imbalance", "ivf_of", "measure_drift"]
