"""Models against each other on the same validation queries, in both caption styles (issue 14's protocol).

    python -m research.compare_models --own val --unseen val-unseen \\
        --arm A=a0/bundle,a1/bundle --arm C=c0/bundle,c1/bundle --compare C-A [--json out.json]

An arm is one recipe: its bundles are its seeds. Each bundle is scored on OWN (a val corpus) and UNSEEN (the same
scenes restyled, ``llm2clip data restyle``) with ``training.eval.evaluate_per_query``; the results are cached in
``--cache`` by model fingerprint and corpus, since scoring a bundle costs a minute. For each ``--compare X-Y``, X's
hits (averaged over its seeds) are paired with Y's on every metric below, one cluster per twin pair
(``research.stats.paired_cluster_test``); ``--near-twins`` adds own-style long near-twin accuracy both ways, each ordered
twin pair a query in its pair's cluster. Every comparison of the run is one family for Holm's correction. A
difference is called one only when its Holm p is below 0.05.

``--save-scores DIR`` keeps each bundle's per-query scores on both corpora as DIR/NAME-K.json (K: its place in the
arm), a few hundred kB that can be committed beside a report. Such a file stands in for its bundle in a later
``--arm`` (``NAME=DIR/NAME-0.json,...``), so new seeds can be compared with arms whose bundles are gone; it is
refused unless it was scored on the very corpora given (their items.jsonl digests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from research.outcomes import clusters_from_pairs, pair_clusters
from research.stats import holm, paired_cluster_test

# (caption style, caption, direction, k): the long-caption R@1 both ways in both styles, the short-caption T2I
# R@1 (what drawing long captions more often could cost), and R@5 on unseen phrasing, where R@1 is near the floor
METRICS: tuple[tuple[str, str, str, int], ...] = (
    ("own", "long", "t2i", 1), ("own", "long", "i2t", 1), ("own", "short", "t2i", 1),
    ("unseen", "long", "t2i", 1), ("unseen", "long", "i2t", 1), ("unseen", "long", "t2i", 5),
    ("unseen", "long", "i2t", 5),
)
# --near-twins adds these: own-style long captions, each ordered twin pair told apart or not (k 0: an accuracy)
TWIN_METRICS: tuple[tuple[str, str, str, int], ...] = (("own", "long", "twin-t2i", 0), ("own", "long", "twin-i2t", 0))
ALPHA = 0.05


def metric_name(metric: tuple[str, str, str, int]) -> str:
    style, caption, direction, k = metric
    if direction.startswith("twin-"):
        return f"{style} {caption} near-twin {direction.removeprefix('twin-')}"
    return f"{style} {caption} {direction} R@{k}"


def hits(per_query: dict[str, Any], metric: tuple[str, str, str, int]) -> np.ndarray:
    _, caption, direction, k = metric
    if direction.startswith("twin-"):
        return np.asarray(per_query["twin_hits"][caption][direction.removeprefix("twin-")]) > 0
    return np.asarray(per_query["ranks"][caption][direction]) < k


def clusters(per_query: dict[str, Any], metric: tuple[str, str, str, int]) -> np.ndarray:
    """Each query's twin group: a scene's, or for a near-twin metric the group of the ordered pair's scenes."""
    pairs = per_query["twin_pairs"]
    scene = clusters_from_pairs(len(per_query["ranks"]["long"]["t2i"]), pairs)
    return pair_clusters(scene, pairs) if metric[2].startswith("twin-") else scene


def family(arms: dict[str, dict[str, list[dict[str, Any]]]], comparisons: list[tuple[str, str]],
           metrics: tuple[tuple[str, str, str, int], ...] = METRICS) -> dict[str, Any]:
    """``arms[name][style]``: per seed, ``evaluate_per_query``'s ``per_query``. Every (comparison, metric) test and
    its Holm p over all of them."""
    tests = {}
    for x, y in comparisons:
        for metric in metrics:
            style = metric[0]
            hx = np.stack([hits(pq, metric) for pq in arms[x][style]])
            hy = np.stack([hits(pq, metric) for pq in arms[y][style]])
            tests[(f"{x}-{y}", metric_name(metric))] = paired_cluster_test(hx, hy, clusters(arms[x][style][0], metric))
    adjusted = holm({f"{c}\t{m}": t.p for (c, m), t in tests.items()})
    out: dict[str, Any] = {"alpha": ALPHA, "correction": "holm", "family": len(tests), "comparisons": {}}
    for (comp, metric), t in tests.items():
        p_holm = adjusted[f"{comp}\t{metric}"]
        out["comparisons"].setdefault(comp, {})[metric] = {**t.as_dict(), "p_holm": p_holm,
                                                            "significant": bool(p_holm < ALPHA)}
    out["means"] = {name: {metric_name(m): [float(hits(pq, m).mean()) for pq in styles[m[0]]] for m in metrics}
                    for name, styles in arms.items()}
    return out


SCORES_FORMAT = "llm2clip-compare-scores/1"


def corpus_id(corpus: Path) -> str:
    return hashlib.sha256((corpus / "items.jsonl").read_bytes()).hexdigest()[:16]


def scored(bundle: Path, fingerprint: str, corpus: Path, cache: Path, threads: int | None) -> dict[str, Any]:
    """``evaluate_per_query``'s ``per_query`` for ``bundle`` (whose fingerprint is given) on ``corpus``, from the
    cache when it is there."""
    from training.eval import evaluate_per_query

    path = cache / f"{fingerprint[:16]}-{corpus_id(corpus)}.json"
    if not path.is_file():
        result = evaluate_per_query(bundle, corpus, threads=threads, progress=False)
        cache.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result["per_query"]))
    return json.loads(path.read_text())


def arm_scores(path: Path, corpora: dict[str, Path], cache: Path, threads: int | None) -> dict[str, Any]:
    """One seed of an arm: ``{style: per_query}`` from its bundle, or from a ``--save-scores`` file made on the same
    corpora."""
    if path.suffix != ".json":
        from llm2clip.bundle import load_bundle

        model = load_bundle(path, verify=False).fingerprint  # read once for the cache names of both corpora
        return {"model": model, **{style: scored(path, model, corpus, cache, threads) for style, corpus in corpora.items()}}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: not a readable scores file ({e.__class__.__name__}); give a bundle folder or a "
                         "file written by --save-scores") from None
    if not isinstance(record, dict) or record.get("format") != SCORES_FORMAT:
        raise SystemExit(f"{path}: not a --save-scores file (format {SCORES_FORMAT} expected)")
    for style, corpus in corpora.items():
        if not isinstance(record.get(style), dict) or not {"corpus", "per_query"} <= record[style].keys():
            raise SystemExit(f"{path}: a --save-scores file without its {style} scores; write it again")
        if record[style]["corpus"] != corpus_id(corpus):
            raise SystemExit(f"{path} was scored on another {style} corpus than {corpus}: compare on the same scenes, "
                             "or score its bundle again")
    return {"model": record.get("model"), **{style: record[style]["per_query"] for style in corpora}}


def save_scores(folder: Path, name: str, scores: list[dict[str, Any]], corpora: dict[str, Path]) -> None:
    """Each seed of arm ``name`` as folder/name-K.json (see the module's doc), with its model's fingerprint."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, seed in enumerate(scores):
        record = {"format": SCORES_FORMAT, "arm": name, "model": seed["model"],
                  **{style: {"corpus": corpus_id(corpus), "per_query": seed[style]} for style, corpus in corpora.items()}}
        (folder / f"{name}-{k}.json").write_text(json.dumps(record) + "\n")


def _arm(value: str) -> tuple[str, list[Path]]:
    name, _, bundles = value.partition("=")
    paths = [Path(b) for b in bundles.split(",") if b]
    if not name or not paths or "/" in name:
        raise argparse.ArgumentTypeError(f"{value!r}: write an arm as NAME=BUNDLE[,BUNDLE...] (a bundle or a "
                                         "--save-scores file per seed)")
    return name, paths


def _comparison(value: str) -> tuple[str, str]:
    x, _, y = value.partition("-")
    if not x or not y:
        raise argparse.ArgumentTypeError(f"{value!r}: write a comparison as X-Y (X minus Y)")
    return x, y


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.compare_models", description=__doc__.split("\n\n")[0])
    p.add_argument("--own", required=True, type=Path, help="a val corpus in the own caption style")
    p.add_argument("--unseen", required=True, type=Path, help="the same scenes in the unseen style")
    p.add_argument("--arm", required=True, action="append", type=_arm,
                   help="NAME=BUNDLE[,BUNDLE...]: one per seed; a --save-scores file may stand for a bundle")
    p.add_argument("--compare", required=True, action="append", type=_comparison, help="X-Y: X minus Y")
    p.add_argument("--cache", type=Path, default=Path("compare-cache"), help="scores per bundle and corpus")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: every core)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.add_argument("--save-scores", type=Path, default=None,
                   help="also keep each seed's per-query scores here as NAME-K.json, usable in a later --arm")
    p.add_argument("--near-twins", action="store_true",
                   help="also test own-style long-caption near-twin accuracy, both ways (2 more tests per comparison)")
    args = p.parse_args(argv)
    arms = dict(args.arm)
    unknown = sorted({n for c in args.compare for n in c} - set(arms))
    if unknown:
        p.error(f"--compare names arms that no --arm gives: {', '.join(unknown)}")
    corpora = {"own": args.own, "unseen": args.unseen}
    seeds = {name: [arm_scores(b, corpora, args.cache, args.threads) for b in sources] for name, sources in arms.items()}
    if args.save_scores:
        for name, scores in seeds.items():
            save_scores(args.save_scores, name, scores, corpora)
    per_query = {name: {style: [s[style] for s in scores] for style in corpora} for name, scores in seeds.items()}
    result = family(per_query, args.compare, METRICS + TWIN_METRICS if args.near_twins else METRICS)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
