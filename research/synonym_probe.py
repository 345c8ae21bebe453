"""Does a text side know that "tote" means bag? Minimal pairs of whole captions, text side only.

Usage: python -m research.synonym_probe --data VAL [--llm DIR ...] [--bundle B ...] [--n 100] [--json OUT]

``research.unseen_factors`` found that the unseen grammar's class nouns cost the demo's model half of its drop
on unseen phrasing. This probe asks where: in the LLM, or in the adapter stage 2 put on top of it. For each of the
first ``--n`` own long captions of ``VAL``, it takes the class of the caption's first object and writes the caption
again with every own noun of that class swapped for each of the unseen grammar's three nouns for it (the
synonyms), and for each of the other nine own class nouns (the wrong classes). A synonym is *known* in that
caption when its version lies nearer the original (cosine) than every wrong-class version does. The table gives
the share known per class and overall, for each encoder: an LLM folder (``--llm``, mean-pooled, centred on the
probe's texts as ``research.text_styles`` centres) or a bundle's text side (``--bundle``, LLM and adapter, plain
cosine as the service ranks). Chance is well below one half: a synonym must beat nine wrong nouns at once.

This reads the unseen grammar's vocabulary: for evaluation only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llm2clip.data import read_dataset
from llm2clip.data.captions.unseen import vocabulary as V
from llm2clip.data.captions.wording import NOUNS
from research.unseen_factors import fix_articles, keep_case

Encode = Callable[[list[str]], np.ndarray]


def swap_class(text: str, cls: str, new: tuple[str, str]) -> str:
    """``text`` with every own noun of ``cls`` (singular or plural, any case) replaced by ``new``'s form."""
    singular, plural = NOUNS[cls]

    def repl(m: re.Match[str]) -> str:
        return keep_case(m.group(0), new[1] if m.group(0).lower() == plural else new[0])

    pattern = rf"(?<![\w-])({re.escape(plural)}|{re.escape(singular)})(?![\w-])"
    return fix_articles(re.sub(pattern, repl, text, flags=re.IGNORECASE))


def minimal_pairs(captions: list[tuple[str, str]]) -> tuple[list[str], list[dict[str, Any]]]:
    """All texts to embed, and per caption where its original, synonym and wrong-class versions sit in them."""
    texts: list[str] = []
    cases = []
    for text, cls in captions:
        at = len(texts)
        synonyms = list(V.CLASS_WORDS[cls])
        wrong = [c for c in NOUNS if c != cls]
        texts += [text] + [swap_class(text, cls, s) for s in synonyms] + [swap_class(text, cls, NOUNS[c]) for c in wrong]
        cases.append({"class": cls, "original": at, "synonyms": [s[0] for s in synonyms],
                      "synonym_rows": list(range(at + 1, at + 1 + len(synonyms))),
                      "wrong_rows": list(range(at + 1 + len(synonyms), len(texts)))})
    return texts, cases


def known(emb: np.ndarray, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Per case and synonym: does its version beat every wrong-class version in cosine to the original?"""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    per_class: dict[str, list[bool]] = {}
    per_word: dict[str, list[bool]] = {}
    for case in cases:
        sims = unit @ unit[case["original"]]
        best_wrong = sims[case["wrong_rows"]].max()
        for word, row in zip(case["synonyms"], case["synonym_rows"], strict=True):
            hit = bool(sims[row] > best_wrong)
            per_class.setdefault(case["class"], []).append(hit)
            per_word.setdefault(word, []).append(hit)
    every = [h for hits in per_class.values() for h in hits]
    return {"known": float(np.mean(every)), "n": len(every),
            "by_class": {c: round(float(np.mean(h)), 3) for c, h in sorted(per_class.items())},
            "by_word": {w: round(float(np.mean(h)), 3) for w, h in sorted(per_word.items())}}


def _llm(folder: Path) -> Encode:
    from training.caption_retrieval import embed_texts

    def encode(texts: list[str]) -> np.ndarray:
        emb = embed_texts(folder, texts, progress=True)
        return emb - emb.mean(axis=0, keepdims=True)  # centred: mean-pooled states share one large direction

    return encode


def _bundle(folder: Path) -> Encode:
    from llm2clip.bundle import load_bundle
    from llm2clip.encoders.onnx import load_onnx_encoders

    _, text = load_onnx_encoders(load_bundle(folder))
    return lambda texts: text.encode(texts)


def run(data: Path, encoders: dict[str, Encode], n: int) -> dict[str, Any]:
    items = read_dataset(data).items[:n]
    captions = [(it.captions["long"], it.meta["objects"][0]["class"]) for it in items if it.meta.get("objects")]
    if not captions:
        raise SystemExit(f"{data} holds no scene with an object: give a scene corpus (`llm2clip data scenes`)")
    texts, cases = minimal_pairs(captions)
    return {"captions": len(captions), "texts": len(texts),
            "encoders": {name: known(encode(texts), cases) for name, encode in encoders.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m research.synonym_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="an own-style scene corpus (val)")
    ap.add_argument("--llm", action="append", default=[], metavar="NAME=DIR",
                    help="an LLM folder, e.g. base=<SmolLM2 folder> or cc=<a stage-1 run>; repeatable")
    ap.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR",
                    help="a model bundle: its text side after stage 2; repeatable")
    ap.add_argument("--n", type=int, default=100, help="captions probed (13 texts each; default 100)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be at least 1")
    encoders: dict[str, Encode] = {}
    for spec, make in [(s, _llm) for s in args.llm] + [(s, _bundle) for s in args.bundle]:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not Path(folder).is_dir():
            ap.error(f"{spec!r}: give NAME=FOLDER with an existing folder")
        encoders[name] = make(Path(folder))
    if not encoders:
        ap.error("give at least one --llm or --bundle")
    result = run(args.data, encoders, args.n)
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
