"""What a bag of words keeps: the repro's text-side probes run on word and word-pair counts of the captions.

Usage: python -m research.bag_of_words_probe --repro DIR [--ngrams 1,2]

The reference line for the fact probe and the text-only near-twin probe (research/fact_probe.py,
training/caption_retrieval.py): a text side that is no better than counting words. For each n, every
caption becomes its tf-idf weighted counts of word n-grams up to n (the 3,000 most frequent features).
Bound facts ("the bag is large") need n >= 2 at least where the caption puts the words side by side; a
unigram bag keeps none (0.5), by construction of the probe.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from llm2clip.data import read_dataset
from research.fact_probe import fact_probe
from training.caption_retrieval import paraphrase_twin_accuracy

WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")
MAX_FEATURES = 3000


def ngram_counts(texts: list[str], n: int) -> np.ndarray:
    """(len(texts), features) counts of word n-grams up to n; the features are the most frequent n-grams."""
    grams = []
    for t in texts:
        words = WORD.findall(t.lower())
        grams.append(Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)))
    df = Counter(g for c in grams for g in c)
    vocab = {g: j for j, (g, _) in enumerate(df.most_common(MAX_FEATURES))}
    x = np.zeros((len(texts), len(vocab)), np.float32)
    for r, c in enumerate(grams):
        for g, v in c.items():
            if g in vocab:
                x[r, vocab[g]] = v
    return x


def tfidf(x: np.ndarray) -> np.ndarray:
    idf = np.log(len(x) / (1.0 + (x > 0).sum(0)))
    y = x * idf
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def _fmt(x: float | None) -> str:
    # a probe on few scenes may find no fact that varies within a stratum
    return "-" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repro", required=True, type=Path, help="a `llm2clip repro --out` folder (its data/)")
    ap.add_argument("--ngrams", default="1,2", help="comma-separated n: n-grams up to n (default 1,2)")
    ap.add_argument("--out", type=Path, help="write the full results here as JSON")
    args = ap.parse_args(argv)
    train = read_dataset(args.repro / "data" / "train")
    test = read_dataset(args.repro / "data" / "test")
    items = [it for it in train.items if isinstance(it.meta, dict) and "objects" in it.meta]
    out = {}
    for n in (int(v) for v in args.ngrams.split(",")):
        x = ngram_counts([it.long for it in items], n)
        facts = fact_probe(tfidf(x), [it.meta for it in items])
        twins = paraphrase_twin_accuracy(lambda texts, n=n: tfidf(ngram_counts(texts, n)), test)
        out[f"ngrams<={n}"] = {"fact_probe": facts, "text_twins": twins}
        sys.stdout.write(f"n-grams up to {n}: named in short {_fmt(facts['named_in_short'])}, long only "
                         f"{_fmt(facts['long_only'])}, bound {_fmt(facts['bound'])} "
                         + json.dumps(facts["bound_by_group"]) + "\n")
        if twins:
            sys.stdout.write(f"  text twins {twins['accuracy']:.3f} "
                             + json.dumps({k: v["accuracy"] for k, v in twins["by_attribute"].items()}) + "\n")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
