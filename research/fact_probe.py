"""Which scene facts a frozen text embedding keeps: linear probes on held-out scenes.

Stage 2 can only align an image with what its caption's embedding still says. For scene-corpus items
(``item.meta`` holds the scene graph) every long caption states the background and each object's class,
colour, size, orientation and cell; the short caption names the count, the classes and the background.
A fact here is a yes/no property of a scene ("some object is red", "the top-left cell is occupied",
"the background is dotted"). For each fact a ridge classifier is fitted on the long-caption embeddings of
part of the scenes and scored on the others: ROC AUC among test scenes with the same number of objects
(0.5 = not kept, 1 = perfectly kept; the count is factored out because it makes many facts likelier). Facts are
grouped: those the short caption also names (``class``, ``background``, ``texture``) and those only the
long caption states (``colour``, ``cell``, ``size``, ``orientation``).

Bound facts (``bound``) ask which object carries a value: "the bag is large", "the dress is in the
top-left cell". Each is scored only among scenes that hold both the class and the value (on some object),
and within scenes with the same number of objects, of objects of that class and of objects with that value,
so no count of words helps: a bag of words scores 0.5. The
near twins of the test split differ in exactly such a binding for cell, size and orientation.

Linear, because the stage-2 adapter is a small MLP over the embedding: a fact that a linear read-out
cannot find is one the adapter has to dig out with its little capacity, from a few thousand captions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from llm2clip.data import Dataset
    from training.embed import CaptionEmbeddings

SHORT_GROUPS = ("class", "background", "texture")
LONG_GROUPS = ("colour", "cell", "size", "orientation")
BOUND_GROUPS = LONG_GROUPS  # attributes bound to an object's class


def scene_facts(meta: dict[str, Any]) -> dict[str, bool]:
    """The yes/no facts of one scene graph, keyed ``group:value``."""
    from llm2clip.data import CLASSES, COLOURS, COLS, ORIENTATIONS, ROWS, SIZES, TEXTURES

    objs, bg = meta["objects"], meta["background"]
    facts = {f"class:{c}": any(o["class"] == c for o in objs) for c in CLASSES}
    facts |= {f"background:{c}": bg["colour"] == c for c in COLOURS}
    facts |= {f"texture:{t}": bg["texture"] == t for t in TEXTURES}
    facts |= {f"colour:{c}": any(o["colour"] == c for o in objs) for c in COLOURS}
    facts |= {f"cell:{r}-{c}": any(o["row"] == r and o["col"] == c for o in objs) for r in ROWS for c in COLS}
    facts |= {f"size:{s}": any(o["size"] == s for o in objs) for s in SIZES}
    facts |= {f"orientation:{s}": any(o["orientation"] == s for o in objs) for s in ORIENTATIONS}
    return facts


def attribute_value(obj: dict[str, Any], group: str) -> str:
    """An object's value in one of the ``BOUND_GROUPS``; a cell is ``row-col`` ("top-left")."""
    return f"{obj['row']}-{obj['col']}" if group == "cell" else str(obj[group])


@functools.cache
def bound_values() -> dict[str, tuple[str, ...]]:
    """Every value each of the ``BOUND_GROUPS`` can take, as ``attribute_value`` writes it."""
    from llm2clip.data import COLOURS, COLS, ORIENTATIONS, ROWS, SIZES

    return {"colour": tuple(COLOURS), "cell": tuple(f"{r}-{c}" for r in ROWS for c in COLS),
            "size": tuple(SIZES), "orientation": tuple(ORIENTATIONS)}


def bound_facts(meta: dict[str, Any]) -> dict[str, tuple[bool, int, int]]:
    """``class:c|group:v`` -> (some c object has v, number of c objects, number of v objects), for every
    class and every value of the ``BOUND_GROUPS``."""
    from llm2clip.data import CLASSES

    objs = meta["objects"]
    classes = [o["class"] for o in objs]
    out = {}
    for group, values in bound_values().items():
        vals = [attribute_value(o, group) for o in objs]
        bound = set(zip(classes, vals, strict=True))
        for c in CLASSES:
            for v in values:
                out[f"class:{c}|{group}:{v}"] = ((c, v) in bound, classes.count(c), vals.count(v))
    return out


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    # average ranks of ties
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    pos = int(positive.sum())
    neg = len(positive) - pos
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def stratified_auc(score: np.ndarray, positive: np.ndarray, strata: np.ndarray) -> float | None:
    """ROC AUC over the (positive, negative) pairs within each stratum; None when no stratum has both."""
    total = weight = 0.0
    for s in np.unique(strata):
        m = strata == s
        pos = int(positive[m].sum())
        pairs = pos * (int(m.sum()) - pos)
        if pairs:
            total += roc_auc(score[m], positive[m]) * pairs
            weight += pairs
    return total / weight if weight else None


@dataclass
class _Facts:
    """The facts of a list of scenes as arrays, one row per scene."""

    keys: list[str]  # scene facts, ``group:value``
    y: np.ndarray  # (scenes, keys) bool
    bound_keys: list[str]  # bound facts, ``class:c|group:v``
    bound: np.ndarray  # (scenes, bound_keys) bool: some c object has v
    n_class: np.ndarray  # (scenes, bound_keys) number of c objects
    n_value: np.ndarray  # (scenes, bound_keys) number of objects with v

    @classmethod
    def of(cls, metas: list[dict[str, Any]]) -> _Facts:
        facts = [scene_facts(m) for m in metas]
        keys = list(facts[0])
        bound = [bound_facts(m) for m in metas]
        bkeys = list(bound[0])
        return cls(keys, np.array([[f[k] for k in keys] for f in facts], dtype=bool), bkeys,
                   np.array([[b[k][0] for k in bkeys] for b in bound], dtype=bool),
                   np.array([[b[k][1] for k in bkeys] for b in bound]),
                   np.array([[b[k][2] for k in bkeys] for b in bound]))


def _ridge_scores(x: np.ndarray, targets: np.ndarray, train: np.ndarray, test: np.ndarray,
                  ridge: float) -> np.ndarray:
    """Scores on the test scenes of a ridge classifier per target column, fitted on the train scenes with
    features standardised on them."""
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    xs = np.c_[(x - mean) / std, np.ones(len(x))]
    gram = xs[train].T @ xs[train] + ridge * np.eye(xs.shape[1])
    w = np.linalg.solve(gram, xs[train].T @ (2.0 * targets[train] - 1.0))
    return xs[test] @ w


def _group_aucs(scores: np.ndarray, facts: _Facts, test: np.ndarray, count: np.ndarray) -> dict[str, list[float]]:
    """Group -> the AUC of each of its facts that varies among test scenes of the same object count."""
    # within scenes of the same object count: "some object is red" or "the top-left cell is taken" is
    # likelier in a scene of six objects, and the count is named in the short caption too
    by_group: dict[str, list[float]] = {}
    for j, key in enumerate(facts.keys):
        auc = stratified_auc(scores[:, j], facts.y[test, j], count)
        if auc is not None:
            by_group.setdefault(key.split(":")[0], []).append(auc)
    return by_group


def _bound_aucs(scores: np.ndarray, facts: _Facts, test: np.ndarray, count: np.ndarray) -> dict[str, list[float]]:
    """Group -> the AUC of each bound fact, among test scenes that hold its class and its value."""
    by_bound: dict[str, list[float]] = {}
    for j, key in enumerate(facts.bound_keys):
        # the class and the value are both in the scene, as often as in the other scenes of the stratum:
        # only which object carries the value varies
        nc, nv = facts.n_class[test, j], facts.n_value[test, j]
        sel = (nc > 0) & (nv > 0)
        strata = (count * 16 + nc) * 16 + nv
        auc = stratified_auc(scores[sel, j], facts.bound[test, j][sel], strata[sel]) if sel.any() else None
        if auc is not None:
            by_bound.setdefault(key.split("|")[1].split(":")[0], []).append(auc)
    return by_bound


def _summary(by_group: dict[str, list[float]], by_bound: dict[str, list[float]]) -> dict[str, Any]:
    def mean_of(groups: tuple[str, ...]) -> float | None:
        vals = [a for g in groups for a in by_group.get(g, [])]
        return round(float(np.mean(vals)), 4) if vals else None

    return {"named_in_short": mean_of(SHORT_GROUPS), "long_only": mean_of(LONG_GROUPS),
            "by_group": {g: round(float(np.mean(v)), 4) for g, v in by_group.items()},
            "bound": round(float(np.mean([a for v in by_bound.values() for a in v])), 4) if by_bound else None,
            "bound_by_group": {g: round(float(np.mean(v)), 4) for g, v in by_bound.items()},
            "facts": sum(len(v) for v in by_group.values()), "bound_facts": sum(len(v) for v in by_bound.values())}


def fact_probe(embeddings: np.ndarray, metas: list[dict[str, Any]], test_fraction: float = 0.25,
               ridge: float = 10.0, seed: int = 0) -> dict[str, Any]:
    """Mean held-out ROC AUC of linear probes for every scene fact, overall and by group, and for every
    bound fact (``bound``, ``bound_by_group``; scored among the test scenes that hold its class and value).

    ``embeddings[i]`` is an embedding of scene ``metas[i]`` (its long caption's, or its image's). Features are
    standardised on the probe's training scenes; a fact that does not vary among test scenes of the same
    object count is skipped.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(metas):
        raise ValueError(f"{len(x)} embeddings for {len(metas)} scenes")
    facts = _Facts.of(metas)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    test, train = perm[:n_test], perm[n_test:]
    scores = _ridge_scores(x, np.c_[facts.y, facts.bound], train, test, ridge)
    count = np.array([len(m["objects"]) for m in metas])[test]
    by_group = _group_aucs(scores, facts, test, count)
    by_bound = _bound_aucs(scores[:, len(facts.keys):], facts, test, count)
    return {**_summary(by_group, by_bound), "train_scenes": len(train), "test_scenes": len(test)}


def probe_caption_embeddings(caps: CaptionEmbeddings, dataset: Dataset, **kw: Any) -> dict[str, Any] | None:
    """``fact_probe`` of the long-caption embeddings in ``caps`` (a ``CaptionEmbeddings``, written by
    ``llm2clip train embed``) over the scene-graph items of ``dataset``; None when it has no scene graphs."""
    items = [it for it in dataset.items if "objects" in it.meta and "background" in it.meta
             and "long" in caps.keys_for(it.id)]
    if len(items) < 8:
        return None
    x = np.stack([caps.get(it.id, "long").float().numpy() for it in items])
    return {**fact_probe(x, [it.meta for it in items], **kw), "text_encoder": caps.manifest.get("text_encoder",
                                                                                                  {}).get("name")}
