"""Is one row's near-twin accuracy really above another's? Paired comparison on the same twin pairs.

Usage: python -m research.twin_significance --data TEST --bundle NAME=BUNDLE [--bundle NAME=BUNDLE ...]

Every row is scored on the same 500 twin pairs of the test split, so two rows' accuracies are paired:
the difference's uncertainty comes from the pairs where they disagree. The first bundle against each of
the others: how much higher its accuracy is (t2i and i2t, long captions), the discordant pairs, an exact
two-sided McNemar (sign) test p-value, and a 95% paired bootstrap interval (10,000 resamples of pairs).
Embeds with each bundle's ONNX encoders, as `llm2clip eval` does (about as long as one eval).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from llm2clip.data import read_dataset
from training.eval import embed_images, embed_texts, sign_test_tail, twin_hits, twin_pairs


def pair_hits(bundle: Path, dataset, pairs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Per twin pair (a, b): t2i hit (a's caption prefers image a) and i2t hit (image a prefers caption a)."""
    from llm2clip.bundle import load_bundle
    from llm2clip.encoders.onnx import load_onnx_encoders

    img_enc, txt_enc = load_onnx_encoders(load_bundle(bundle))
    image = embed_images(img_enc, dataset, 32, True)
    text = embed_texts(txt_enc, [it.long for it in dataset.items], True, "long captions")
    return twin_hits(text, image, pairs)


def mcnemar_p(only_first: int, only_second: int) -> float:
    """Exact two-sided sign test on the discordant pairs."""
    n = only_first + only_second
    # the smaller count's lower tail equals, by symmetry, the upper tail from the larger count
    return min(1.0, 2 * sign_test_tail(n, max(only_first, only_second)))


def compare(first: np.ndarray, other: np.ndarray, seed: int = 0, resamples: int = 10_000) -> dict[str, Any]:
    """How much ``first`` beats ``other`` on the same pairs (boolean hits each)."""
    rng = np.random.default_rng(seed)
    diff = first.astype(float) - other.astype(float)
    boot = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(1)
    only_first, only_other = int((first & ~other).sum()), int((other & ~first).sum())
    return {"difference": float(diff.mean()),
            "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            "only_first": only_first, "only_other": only_other, "p_mcnemar": mcnemar_p(only_first, only_other)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="test split with near twins (a repro's DIR/data/test)")
    ap.add_argument("--bundle", action="append", required=True, metavar="NAME=BUNDLE",
                    help="a row's model bundle; the first is compared with each of the others")
    args = ap.parse_args(argv)
    ds = read_dataset(args.data)
    pairs = twin_pairs(ds)
    if not pairs:
        raise SystemExit(f"{args.data} has no near twins: use a scene corpus's test split")
    hits = {}
    for spec in args.bundle:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--bundle {spec!r}: write NAME=BUNDLE")
        hits[name] = pair_hits(Path(path), ds, pairs)
    names = list(hits)
    out = {"n_pairs": len(pairs), "accuracy": {n: {k: float(v.mean()) for k, v in h.items()} for n, h in hits.items()},
           "first": names[0], "first_minus": {}}
    for name in names[1:]:
        out["first_minus"][name] = {k: compare(hits[names[0]][k], hits[name][k]) for k in ("t2i", "i2t")}
    sys.stdout.write(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
