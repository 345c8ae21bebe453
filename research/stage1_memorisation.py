"""Does the stage-1 encoder of a repro run know the training scenes it saw better than the ones it did not?

Usage: python -m research.stage1_memorisation --stage1 DIR/stage1/<recipe>-<steps>[-top<n>]/seed-<k> [--n 300]

Stage 1 draws scenes in the order of its view sampler (epoch 0: a seeded permutation), so the scenes it
saw are the first ``steps x batch`` of that permutation. Caption retrieval accuracy (long <-> short) is
measured on ``n`` seen and ``n`` unseen training scenes with the same encoder; equal numbers mean stage 1
did not memorise the scenes stage 2 then trains on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from llm2clip.data import read_dataset
from training.caption_retrieval import caption_retrieval
from training.stage1.views import ViewSampler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage1", required=True, type=Path,
                    help="a stage-1 run folder: in a `llm2clip repro --out DIR` run, DIR/stage1/<recipe>-<steps>[-top<n>]/seed-<k>")
    ap.add_argument("--n", type=int, default=300, help="scenes per group (default 300)")
    args = ap.parse_args(argv)
    stage1 = args.stage1
    summary = json.loads((stage1 / "stage1.json").read_text())
    recipe = summary["recipe"]
    if recipe.get("hard_negatives") or recipe.get("mntp_steps"):
        raise SystemExit("only plain contrastive stage-1 runs are supported (no MNTP, no hard negatives)")
    pools = json.loads((stage1 / "checkpoint" / "captions.json").read_text())
    if not all(len(p) >= 2 for p in pools):
        raise SystemExit("every item needs two captions for the sampler's order to be reconstructed")
    steps, batch, seed = recipe["steps"], recipe["batch_size"] * recipe["grad_accum"], recipe["seed"]
    if steps * batch > len(pools):
        raise SystemExit("stage 1 went past one epoch: every scene was seen")
    perm = np.random.default_rng([seed, 0, 0]).permutation(len(pools))  # ViewSampler, stream 0, epoch 0
    seen_idx = {int(i) for i in perm[: steps * batch]}
    sampler = ViewSampler(pools, recipe["batch_size"], seed, 0)
    drawn = {t for m in range(steps * recipe["grad_accum"]) for t in sampler(m)[0]}
    assert drawn <= {t for i in seen_idx for t in pools[i]}, "the sampler's order is not the one reconstructed"
    ds = read_dataset(summary["train"]["dataset"])  # the training scenes the run recorded
    rng = np.random.default_rng(0)
    out = {"seen_scenes": len(seen_idx), "train_scenes": len(ds)}
    for name, keep in (("seen", True), ("unseen", False)):
        items = [it for i, it in enumerate(ds.items) if (i in seen_idx) == keep]
        pick = [items[int(i)] for i in sorted(rng.choice(len(items), min(args.n, len(items)), replace=False))]
        r = caption_retrieval(stage1, dataclasses.replace(ds, items=pick), progress=False)
        out[name] = {k: round(r[k], 4) for k in ("long_to_short", "short_to_long", "caption_retrieval")}
    sys.stdout.write(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
