"""Is one row's near-twin accuracy really above another's? Paired tests on the same twin pairs, counted once.

Usage: python -m research.twin_significance --data TEST --bundle NAME=B1[,B2,...] --bundle NAME=... [...]
       [--pooled] [--n-perm N] [--seed S]

Every row is scored on the same twin pairs of the test split, so two rows' accuracies are paired. The
near-twin test scores each twin pair (a, b) twice, a against b and b against a, in each direction: those
outcomes are not independent, so each twin pair is one cluster holding all of them (``research.stats``).
Per row, hits are averaged over its bundles (one per seed: ``NAME=B1,B2,B3``), then within each twin pair;
the first row is compared with each of the others on t2i and i2t (long captions), and with ``--pooled``
also on both directions together (all four outcomes of a twin pair in one cluster). For each comparison:
the difference in accuracy, a 95% cluster-bootstrap interval, the discordant twin pairs, a sign-flip
permutation p over twin pairs and its Holm-adjusted value across all the comparisons of the run. A
difference is ``significant`` only when the adjusted p < 0.05. Each row's accuracy is given as mean ± sd
over its seeds.
Embeds with each bundle's ONNX encoders, as `llm2clip eval` does (about as long as one eval per bundle).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm2clip.data import read_dataset
from llm2clip.errors import LLM2CLIPError
from research.outcomes import clusters_from_pairs
from research.stats import Outcomes, compare_rows, fmt_mean_sd, mean_sd
from training.eval import embed_images, embed_texts, twin_hits, twin_pairs

DIRECTIONS = ("t2i", "i2t")


def pair_hits(bundle: Path, dataset, pairs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Per ordered twin pair (a, b): t2i hit (a's caption prefers image a) and i2t hit (image a prefers
    caption a)."""
    from llm2clip.bundle import load_bundle
    from llm2clip.encoders.onnx import load_onnx_encoders

    img_enc, txt_enc = load_onnx_encoders(load_bundle(bundle))
    image = embed_images(img_enc, dataset, 32, True)
    text = embed_texts(txt_enc, [it.long for it in dataset.items], True, "long captions")
    return twin_hits(text, image, pairs)


def twin_outcomes(seeds: Sequence[Mapping[str, np.ndarray]], clusters: np.ndarray,
                  pooled: bool = False) -> dict[str, Outcomes]:
    """One row's ``Outcomes`` per metric from its seeds' ``pair_hits``; ``clusters`` holds each ordered pair's
    twin-pair id. ``pooled`` adds ``t2i+i2t``: both directions as queries of the same clusters."""
    out = {k: Outcomes(np.stack([s[k] for s in seeds]), clusters) for k in DIRECTIONS}
    if pooled:
        out["t2i+i2t"] = Outcomes(np.concatenate([out[k].hits for k in DIRECTIONS], axis=1),
                                  np.concatenate([clusters, clusters]))
    return out


def significance(hits: Mapping[str, Sequence[Mapping[str, np.ndarray]]], pairs: Sequence[tuple[int, int]],
                 n_scenes: int, pooled: bool = False, n_perm: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """The script's JSON from each row's per-seed ``pair_hits`` (the first row is the reference)."""
    clusters = clusters_from_pairs(n_scenes, pairs)[[a for a, _ in pairs]]
    rows = {name: twin_outcomes(s, clusters, pooled) for name, s in hits.items()}
    accuracy = {}
    for name, metrics in rows.items():
        accuracy[name] = {}
        for metric, o in metrics.items():
            per_seed = o.hits.mean(axis=1).tolist()
            mean, sd = mean_sd(per_seed)
            accuracy[name][metric] = {"mean": mean, "sd": sd, "per_seed": per_seed,
                                      "text": fmt_mean_sd(per_seed)}
    result = compare_rows(rows, reference=next(iter(rows)), n_perm=n_perm, seed=seed)
    return {"n_twin_pairs": int(len(np.unique(clusters))), "n_ordered_pairs": len(pairs),
            "seeds": {name: len(s) for name, s in hits.items()}, "accuracy": accuracy, **result}


def parse_bundles(specs: Sequence[str]) -> dict[str, list[Path]]:
    """``NAME=B1[,B2,...]`` specs, in order, as {name: bundles}."""
    out: dict[str, list[Path]] = {}
    for spec in specs:
        name, _, paths = spec.partition("=")
        bundles = [p for p in paths.split(",") if p]
        if not name or not bundles:
            raise LLM2CLIPError(f"--bundle {spec!r}: write NAME=BUNDLE or NAME=BUNDLE1,BUNDLE2,... "
                                "(one per seed)")
        if name in out:
            raise LLM2CLIPError(f"--bundle {name} is given twice: list all of its seeds' bundles in one "
                                f"--bundle {name}=B1,B2,...")
        out[name] = [Path(p) for p in bundles]
    if len(out) < 2:
        raise LLM2CLIPError("give at least two rows (--bundle NAME=... twice): the first is compared with "
                            "the others")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Each twin pair is one cluster (both members, both orders); a row's hits are averaged over its "
               "seeds' bundles, then within each twin pair. Prints JSON: each row's accuracy (mean ± sd over "
               "seeds) and the first row against each other one (difference, 95% cluster-bootstrap interval, "
               "sign-flip p, Holm-adjusted p, significant when that is < 0.05).")
    ap.add_argument("--data", required=True, type=Path,
                    help="test split with near twins (a repro's DIR/data/test)")
    ap.add_argument("--bundle", action="append", required=True, metavar="NAME=B1[,B2,...]",
                    help="a row's model bundle, or its bundles one per seed separated by commas; the first "
                         "row is compared with each of the others")
    ap.add_argument("--pooled", action="store_true",
                    help="also compare t2i and i2t together (all four outcomes of a twin pair in one "
                         "cluster)")
    ap.add_argument("--n-perm", type=int, default=10_000,
                    help="Monte Carlo sign flips when more than 20 twin pairs differ (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the permutations and bootstrap resamples")
    args = ap.parse_args(argv)
    try:
        bundles = parse_bundles(args.bundle)
        ds = read_dataset(args.data)
        pairs = twin_pairs(ds)
        if not pairs:
            raise LLM2CLIPError(f"{args.data} has no near twins: use a scene corpus's test split")
        hits = {name: [pair_hits(b, ds, pairs) for b in paths] for name, paths in bundles.items()}
        out = significance(hits, pairs, len(ds), args.pooled, args.n_perm, args.seed)
    except LLM2CLIPError as exc:
        ap.error(str(exc))
    sys.stdout.write(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
