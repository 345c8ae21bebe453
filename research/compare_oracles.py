"""Compare vision sides trained against the oracle text side, per query, on the split they were scored on.

Usage: python -m research.compare_oracles --run NAME=DIR[,DIR...] [--run ...] --compare B-A [--compare ...] [--out F]

Each DIR is a ``research.oracle_text_side --out`` folder; its ``oracle.json`` holds per-query outcomes (long
captions: t2i and i2t R@1 per scene, near-twin t2i and i2t per directed pair). ``B-A`` tests B against A on
the same queries with ``research.stats.paired_cluster_test``, clustered by twin pair (a scene, its twin and
both directions of the pair are one cluster), and Holm's correction runs over every test of the invocation.
A difference is called one only where the adjusted p is below 0.05. A run given several folders (one per seed)
enters each query as its hits averaged over them; with one seed per run this says whether two trained models
differ on these scenes, not how much a retrained one would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from research.outcomes import clusters_from_pairs, pair_clusters
from research.stats import holm, paired_cluster_test

METRICS = ("t2i_r1", "i2t_r1", "twin_t2i", "twin_i2t")


def _seeds(folders: str) -> dict[str, Any]:
    """One run's per-query outcomes over its seeds' folders: each metric as (seeds, queries)."""
    seeds = [_per_query(Path(f)) for f in folders.split(",") if f]
    first = seeds[0]
    if any(q["split"] != first["split"] or q["twin_pairs"] != first["twin_pairs"] for q in seeds[1:]):
        raise SystemExit(f"the folders of {folders} were scored on different scenes: score all on the same split")
    return {"split": first["split"], "twin_pairs": first["twin_pairs"],
            **{m: [q[m] for q in seeds] for m in METRICS}}


def _per_query(folder: Path) -> dict[str, Any]:
    path = folder / "oracle.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python -m research.oracle_text_side --out {folder}` first")
    result = json.loads(path.read_text())
    if "per_query" not in result:
        raise SystemExit(f"{path} has no per-query outcomes: rerun `research.oracle_text_side` on it (it resumes "
                         "the trained checkpoint and only scores again)")
    return {"split": result.get("split", "test"), **result["per_query"]}


def clusters_for(metric: str, per_query: dict[str, Any]) -> np.ndarray:
    """Each query's cluster: scenes and directed twin pairs map to their twin group (``per_query``: a run's
    outcomes as ``_seeds`` holds them, one row per seed)."""
    pairs = per_query["twin_pairs"]
    scene_cluster = clusters_from_pairs(len(per_query["t2i_r1"][0]), pairs)
    if metric.startswith("twin_"):
        return pair_clusters(scene_cluster, pairs)
    return scene_cluster


def compare(runs: dict[str, dict[str, Any]], comparisons: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """One entry per (comparison, metric), with Holm-adjusted p over all of them."""
    entries = []
    for b, a in comparisons:
        qa, qb = runs[a], runs[b]
        if qa["split"] != qb["split"] or qa["twin_pairs"] != qb["twin_pairs"]:
            raise SystemExit(f"{b} and {a} were scored on different scenes: score both on the same split")
        for metric in METRICS:
            t = paired_cluster_test(np.array(qb[metric]), np.array(qa[metric]), clusters_for(metric, qa))
            entries.append({"b": b, "a": a, "metric": metric, "split": qa["split"], "b_mean": t.mean_a,
                            "a_mean": t.mean_b, "difference": t.difference, "ci95": list(t.ci95), "p": t.p,
                            "n_clusters": t.n_clusters, "b_ahead": t.a_ahead, "a_ahead": t.b_ahead,
                            "method": t.method})
    adjusted = holm({str(i): e["p"] for i, e in enumerate(entries)})
    for i, e in enumerate(entries):
        e["p_holm"] = adjusted[str(i)]
    return entries


def markdown(entries: list[dict[str, Any]]) -> str:
    lines = ["| B - A | metric | B | A | difference (95% CI) | clusters B / A ahead | p | Holm p |",
             "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        lo, hi = e["ci95"]
        lines.append(f"| {e['b']} - {e['a']} | {e['metric']} | {e['b_mean']:.3f} | {e['a_mean']:.3f} | "
                     f"{e['difference']:+.3f} ({lo:+.3f}..{hi:+.3f}) | {e['b_ahead']} / {e['a_ahead']} | "
                     f"{e['p']:.3g} | {e['p_holm']:.3g} |")
    return "\n".join(lines) + "\n"


def _pair(text: str, sep: str) -> tuple[str, str]:
    left, found, right = text.partition(sep)
    if not found or not left or not right:
        raise argparse.ArgumentTypeError(f"expected LEFT{sep}RIGHT, got {text!r}")
    return left, right


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, type=lambda t: _pair(t, "="), metavar="NAME=DIR[,DIR...]",
                    help="a vision side: its oracle_text_side output folder, one per seed")
    ap.add_argument("--compare", action="append", required=True, type=lambda t: _pair(t, "-"), metavar="B-A",
                    help="test run B against run A (positive: B ahead)")
    ap.add_argument("--out", type=Path, help="write the entries as JSON here")
    args = ap.parse_args(argv)
    runs = {name: _seeds(folders) for name, folders in args.run}
    missing = {n for pair in args.compare for n in pair} - set(runs)
    if missing:
        raise SystemExit(f"--compare names runs without --run: {', '.join(sorted(missing))}")
    entries = compare(runs, args.compare)
    if args.out:
        args.out.write_text(json.dumps(entries, indent=2))
    sys.stdout.write(markdown(entries))


if __name__ == "__main__":
    main()
