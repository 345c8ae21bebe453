"""How much of a model's retrieval survives captions in phrasing it was never trained on?

Usage: python -m research.unseen_phrasing --model BUNDLE --own TEST --unseen TEST_UNSEEN [--json OUT]

``TEST_UNSEEN`` holds the same scenes as ``TEST`` with captions of the evaluation-only grammar
(`llm2clip data restyle --data TEST --out TEST_UNSEEN`, or `llm2clip data scenes --caption-style unseen`);
the images must be byte for byte the same, which is checked. The images are embedded once and both caption
sets with the bundle's encoders (the variant `llm2clip eval` picks), so the two styles are scored against
one gallery and each query is paired with itself: long-caption R@1 both ways and near-twin accuracy per
style, the relative drop (1 - unseen / own), and a 95% bootstrap interval of the drop that resamples twin
groups (a scene and its twins move together: they are not independent), with an exact sign test on the
queries one style gets right and the other does not. ``length_matched`` repeats the R@1 drops on the
queries whose unseen caption is no longer (in tokens) than its own one, so a drop there is not the
unseen grammar's longer sentences.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from llm2clip.data import Dataset, read_dataset
from llm2clip.data.captions.unseen import twin_groups
from llm2clip.errors import DatasetError
from research.stats import paired_cluster_test
from training.eval import embed_images, embed_texts, ranks, twin_hits, twin_pairs


def same_scenes(own: Dataset, unseen: Dataset) -> None:
    """Refuse two corpora that are not the same scenes with the same image bytes."""
    if [it.id for it in own] != [it.id for it in unseen]:
        raise DatasetError("the two corpora hold different items: restyle one from the other (`llm2clip data restyle`)")
    for a, b in zip(own, unseen, strict=True):
        if a.meta.get("objects") != b.meta.get("objects"):
            raise DatasetError(f"item {a.id!r} has another scene graph in the two corpora")
        digests = {hashlib.sha256(ds.image_path(it).read_bytes()).digest() for ds, it in ((own, a), (unseen, b))}
        if len(digests) != 1:
            raise DatasetError(f"item {a.id!r} has different image bytes in the two corpora")


def hits(text: np.ndarray, image: np.ndarray, pairs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Per query: t2i and i2t R@1 hits; per twin pair: t2i and i2t near-twin hits."""
    sim = text @ image.T
    twins = twin_hits(text, image, pairs) if pairs else {"t2i": np.zeros(0, bool), "i2t": np.zeros(0, bool)}
    return {"t2i_r1": ranks(sim) == 0, "i2t_r1": ranks(sim.T) == 0, "twin_t2i": twins["t2i"], "twin_i2t": twins["i2t"]}


def cluster_drop(own: np.ndarray, unseen: np.ndarray, clusters: list[np.ndarray], seed: int = 0,
                 resamples: int = 10_000) -> dict[str, Any]:
    """The relative drop of a hit rate from ``own`` to ``unseen`` (paired booleans), with a 95% interval from a
    bootstrap over ``clusters`` (arrays of indices that move together)."""
    rng = np.random.default_rng(seed)
    o = np.array([own[c].sum() for c in clusters], float)
    u = np.array([unseen[c].sum() for c in clusters], float)
    picks = rng.integers(0, len(clusters), size=(resamples, len(clusters)))
    so, su = o[picks].sum(1), u[picks].sum(1)
    drops = (1 - su / np.maximum(so, 1))[so > 0]  # a resample without an own hit has no drop
    ci = [round(float(x), 4) for x in np.percentile(drops, [2.5, 97.5])] if len(drops) else [None, None]
    only_own, only_unseen = int((own & ~unseen).sum()), int((unseen & ~own).sum())
    # the paired test clusters as the interval does: queries of one twin group are not independent
    ids = np.arange(len(own)) + len(clusters)  # a query in no group is a group of its own
    for g, members in enumerate(clusters):
        ids[members] = g
    test = paired_cluster_test(own.astype(float), unseen.astype(float), ids, seed=seed)
    return {"own": float(own.mean()), "unseen": float(unseen.mean()),
            "drop": float(1 - unseen.sum() / own.sum()) if own.sum() else None,
            "drop_ci95": ci,
            "only_own": only_own, "only_unseen": only_unseen, "p_clustered": test.p}


def compare_styles(own_hits: dict[str, np.ndarray], unseen_hits: dict[str, np.ndarray], dataset: Dataset,
                   pairs: list[tuple[int, int]], lengths: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Every metric of both styles, clustered by twin group (queries) and by the group of a pair's scene (pairs);
    ``lengths``: (own, unseen) caption tokens per item, for the length-matched subset."""
    groups = twin_groups(dataset.items)
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    clusters = [np.asarray(m) for m in groups]
    pair_clusters: dict[int, list[int]] = {}
    for j, (a, _) in enumerate(pairs):
        pair_clusters.setdefault(group_of[a], []).append(j)
    by_pair = [np.asarray(v) for v in pair_clusters.values()]
    out: dict[str, Any] = {}
    for key in own_hits:
        cl = by_pair if key.startswith("twin") else clusters
        if len(own_hits[key]):
            out[key] = cluster_drop(own_hits[key], unseen_hits[key], cl)
    if lengths is not None:
        keep = lengths[1] <= lengths[0]
        # the kept queries renumbered 0..kept-1, each still in its twin group
        renumber = np.cumsum(keep) - 1
        sub = [renumber[c[keep[c]]] for c in clusters if keep[c].any()]
        out["length_matched"] = {
            "n": int(keep.sum()), "own_tokens": float(lengths[0][keep].mean()),
            "unseen_tokens": float(lengths[1][keep].mean()),
            **{k: cluster_drop(own_hits[k][keep], unseen_hits[k][keep], sub) for k in ("t2i_r1", "i2t_r1")},
        } if keep.any() else {"n": 0}
    return {"n": len(dataset), "n_twin_pairs": len(pairs), "n_clusters": len(clusters), **out}


def run(model: Path, own_dir: Path, unseen_dir: Path, threads: int | None = None) -> dict[str, Any]:
    return run_many(model, own_dir, [unseen_dir], threads)[0]


def run_many(model: Path, own_dir: Path, unseen_dirs: list[Path], threads: int | None = None) -> list[dict[str, Any]]:
    """``run`` for several restylings of one corpus: the bundle, the images and the own captions are embedded once."""
    from llm2clip.bundle import load_bundle
    from llm2clip.encoders import load_encoders

    own = read_dataset(own_dir)
    bundle = load_bundle(model)
    img_enc, txt_enc = load_encoders(bundle, threads=threads)
    image = embed_images(img_enc, own, 32, True)
    pairs = twin_pairs(own)
    own_hits = hits(embed_texts(txt_enc, [it.long for it in own.items], True, "own long captions"), image, pairs)
    own_lengths = np.array([it.meta.get("long_tokens", 0) for it in own.items])
    results = []
    for unseen_dir in unseen_dirs:
        unseen = read_dataset(unseen_dir)
        same_scenes(own, unseen)
        text = embed_texts(txt_enc, [it.long for it in unseen.items], True, "unseen long captions")
        lengths = (own_lengths, np.array([it.meta.get("long_tokens", 0) for it in unseen.items]))
        result = compare_styles(own_hits, hits(text, image, pairs), own, pairs, lengths)
        results.append({"model": bundle.fingerprint, "own": str(own_dir), "unseen": str(unseen_dir), **result})
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m research.unseen_phrasing", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="model bundle folder")
    p.add_argument("--own", required=True, type=Path, help="a test corpus in the own caption style")
    p.add_argument("--unseen", required=True, type=Path, help="the same scenes in the unseen style")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: every core)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = run(args.model, args.own, args.unseen, args.threads)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
