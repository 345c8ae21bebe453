"""Probe: does stage 2 learn to tell near twins apart when its batches hold them as hard negatives?

Usage:
    python -m research.twin_batches_probe data --out DIR/data/train [--n 4000] [--seed 0]
    python -m research.twin_batches_probe train --repro DIR --out OUT [research.oracle_text_side options]

The train split has no near twins (DATASET.md): a stage-2 batch of 64 random scenes never asks the vision
tower to tell a scene from its twin. ``data`` writes a train corpus made as the val and test splits are, in
(scene, twin) pairs, from the train split's own photos and random streams (so it shares no photo with val or
test). ``train`` runs ``research.oracle_text_side`` with every epoch's order drawn over pairs, so a scene and
its twin always land in the same batch: each is the other's hard negative, as NegCLIP's are.

This is a probe, not a recipe option: it patches two private functions (the generator's scene plan and the
epoch permutation) rather than adding a flag, because it did not help (docs/results/vision-side.md). Put the
other splits beside the corpus it writes (``DIR/data/val``, ``DIR/data/test``) before ``train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

_randperm = torch.randperm


def pair_permutation(n: int, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
    """A random order of ``n`` scenes (n even) that keeps scenes 2p and 2p + 1 next to each other."""
    if n % 2:
        raise SystemExit(f"a corpus of twin pairs has an even number of scenes, not {n}")
    pairs = _randperm(n // 2, generator=generator)
    return (pairs[:, None] * 2 + torch.tensor([0, 1])).flatten()


def write_twin_corpus(out: Path, n: int, seed: int, progress: bool = True):
    """``n`` train-split scenes in twin pairs (2p, 2p + 1), planned as the val and test splits plan theirs."""
    import llm2clip.data.generator as gen

    plan = gen._plan
    gen._plan = lambda n_, split, seed_, pools: gen._test_scenes(n_, split, seed_, pools)
    try:
        return gen.generate_scenes(out, n, "train", seed, progress=progress)
    finally:
        gen._plan = plan


def train_with_pairs(oracle_argv: list[str]) -> None:
    """``research.oracle_text_side`` with each epoch's order drawn over twin pairs."""
    from research import oracle_text_side

    torch.randperm = pair_permutation  # stage 2 draws each epoch's order with torch.randperm
    try:
        oracle_text_side.main(oracle_argv)
    finally:
        torch.randperm = _randperm


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        train_with_pairs(argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="write a train corpus of twin pairs")
    d.add_argument("--out", required=True, type=Path)
    d.add_argument("--n", type=int, default=4000, help="scenes (even: 2 per pair; default 4000)")
    d.add_argument("--seed", type=int, default=0)
    sub.add_parser("train", help="research.oracle_text_side's options follow; batches keep twin pairs together")
    args = ap.parse_args(argv)
    write_twin_corpus(args.out, args.n, args.seed)


if __name__ == "__main__":
    main()
