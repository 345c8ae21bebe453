"""How much of a held-out caption grammar's phrasing a training grammar already holds: word n-gram overlap.

Usage: python -m research.phrase_overlap --own DIR --unseen DIR [--split val --seed 1] [--n 3 4 5] [--json OUT]

OWN is a scene corpus in the own style and UNSEEN the same scenes restyled (``llm2clip data restyle``). The own
scenes' training captions in other words (``long_w1``) and in the alt grammar (``long_a1``) are made here from
their scene graphs, with the corpus's split and seed (``llm2clip data scenes``'s, so they are the captions that
corpus would get with ``--other-words 1 --alt-captions 1``). For each n, the share of the unseen long captions'
n-grams that also occur anywhere among each training caption kind: of the distinct n-grams, and of their
occurrences. And ``new-words``: of the words the unseen captions use and the own captions (long and short) never
do, the share each kind holds; the own captions hold none by construction. A training grammar written apart from the unseen one should hold little of it; what it does hold is
phrasing a model can meet again at evaluation.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from llm2clip.cliargs import non_negative_int, positive_int
from llm2clip.data import read_dataset
from llm2clip.data.generator import add_alt_captions, add_other_words

KINDS = ("long", "long_w1", "long_a1")


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9-]+", text.lower())
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def overlap(held_out: list[str], corpora: dict[str, list[str]], n: int) -> dict[str, dict[str, float]]:
    """Per corpus: the share of ``held_out``'s distinct n-grams, and of its n-gram occurrences, found in it."""
    counts = Counter(g for text in held_out for g in ngrams(text, n))
    total = sum(counts.values())
    out = {}
    for name, texts in corpora.items():
        seen = {g for text in texts for g in ngrams(text, n)}
        out[name] = {"distinct": round(sum(g in seen for g in counts) / max(1, len(counts)), 4),
                     "occurrences": round(sum(k for g, k in counts.items() if g in seen) / max(1, total), 4)}
    return out


def new_words(held_out: list[str], own: list[str], corpora: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Per corpus: the share of the words ``held_out`` uses and the own captions never do (its synonyms and
    constructions of its own) that occur in it, of the distinct words and of their occurrences."""
    known = {g for text in own for g in ngrams(text, 1)}
    fresh = [" ".join(w for (w,) in ngrams(text, 1) if (w,) not in known) for text in held_out]
    return overlap(fresh, corpora, 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--own", required=True, type=Path, help="a scene corpus in the own caption style")
    ap.add_argument("--unseen", required=True, type=Path, help="the same scenes restyled (`llm2clip data restyle`)")
    ap.add_argument("--split", default="val", help="the split OWN was generated as (default val)")
    ap.add_argument("--seed", type=non_negative_int, default=1, help="the seed OWN was generated with (default 1)")
    ap.add_argument("--n", type=positive_int, nargs="+", default=[3, 4, 5], help="n-gram lengths (default 3 4 5)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    own, unseen = read_dataset(args.own), read_dataset(args.unseen)
    if [(i.id, i.meta.get("objects")) for i in own.items] != [(i.id, i.meta.get("objects")) for i in unseen.items]:
        raise SystemExit(f"{args.unseen} does not hold the scenes of {args.own}: restyle that corpus")
    add_other_words(own.items, args.split, args.seed, 1)
    add_alt_captions(own.items, args.split, args.seed, 1)
    corpora = {k: [i.captions[k] for i in own.items if k in i.captions] for k in KINDS}
    held_out = [i.captions["long"] for i in unseen.items]
    result = {"scenes": len(own), **{f"{n}-grams": overlap(held_out, corpora, n) for n in args.n},
              "new-words": new_words(held_out, corpora["long"] + [i.captions["short"] for i in own.items], corpora)}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
