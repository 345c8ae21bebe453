"""Which part of the unseen grammar costs R@1: its words, one kind at a time, or its sentences?

Usage: python -m research.unseen_factors --data VAL --out DIR [--model BUNDLE --unseen VAL_UNSEEN] [--json OUT]

The unseen caption style (``captions.unseen``) differs from the own one in two ways at once: other words for
every fact (class nouns, sizes, orientations, cells, relations, textures) and other sentences (orders,
constructions, what the count and the background sentences say). This probe takes them apart. It writes the own
corpus ``VAL`` again with the own long captions' words of one kind swapped for the unseen grammar's words of that
kind, every sentence left as the own generator wrote it:

- ``class``: the class nouns ("bag" -> "tote", "pair of trousers" -> "pair of chinos");
- ``size``: small / medium(-sized) / large -> the unseen size adjectives;
- ``orientation``: the orientation predicates ("turned upside down" -> "turned on its head") and adjectives
  ("upside-down" -> "inverted");
- ``cell``: the cell phrases ("in the top left cell", "in the right column of the top row", "in the top left
  corner of the picture") -> "in the upper-right corner", and the empty-cell list;
- ``relation``: "above and to the left of" -> "north-west of", and so on;
- ``texture``: the background's texture adjective;
- ``words``: all six at once, so the gap between ``words`` and the unseen corpus is what the unseen sentences
  (and the few words no kind covers: "pieces", "backdrop", the count's wording) cost.

A scene and its near twins draw one choice per value ("bag" is "tote" in every caption of the group), as the
unseen grammar's plan does, so twins still differ only where their facts differ. Short captions, images (hard
links), ids and scene graphs stay; ``long_tokens`` is measured again, the twin mention token is kept (a swap moves
it by a few tokens at most). With ``--model``, each variant and the unseen corpus are scored against the own
corpus by ``research.unseen_phrasing`` (one gallery, paired per query, the drop's interval over twin groups);
the images and the own captions are embedded once for all of them.
This reads the unseen grammar's vocabulary, so its corpora are for evaluation only, never for training.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from llm2clip.data import read_dataset
from llm2clip.data.captions import templates as T
from llm2clip.data.captions.long import default_token_counter
from llm2clip.data.captions.unseen import twin_groups
from llm2clip.data.captions.unseen import vocabulary as V
from llm2clip.data.captions.wording import NOUNS
from llm2clip.data.dataset import Item, write_items
from llm2clip.data.generator import prepare_out
from llm2clip.data.restyle import _place
from llm2clip.data.scene_graph import COLS, ROWS

FACTORS = ("class", "size", "orientation", "cell", "relation", "texture")
Choice = dict[str, int]  # "factor:value" -> index of the unseen alternative


def _words(alternatives: Sequence[str]) -> str:
    return "|".join(re.escape(a) for a in sorted(alternatives, key=len, reverse=True))


def _sub(pattern: str, text: str, repl: Callable[[re.Match[str]], str]) -> str:
    # a whole word or phrase: no letter or hyphen on either side ("shirt" is not found inside "t-shirt")
    return re.sub(rf"(?<![\w-])(?:{pattern})(?![\w-])", repl, text)


def keep_case(old: str, new: str) -> str:
    return new[0].upper() + new[1:] if old[0].isupper() else new


def _pick(choice: Choice, key: str, options: Sequence[str]) -> str:
    return options[choice[key] % len(options)]


def _class(text: str, choice: Choice) -> str:
    forms = {form.lower(): (cls, k) for cls, pair in NOUNS.items() for k, form in enumerate(pair)}

    def swap(m: re.Match[str]) -> str:
        cls, plural = forms[m.group(0).lower()]
        return keep_case(m.group(0), _pick(choice, f"class:{cls}", [p[plural] for p in V.CLASS_WORDS[cls]]))

    return _sub(_words(list(forms)), text, swap)


def _size(text: str, choice: Choice) -> str:
    forms = {w: size for size, words in T.SIZE_WORDS.items() for w in words}
    return _sub(_words(list(forms)), text,
                lambda m: keep_case(m.group(0), _pick(choice, f"size:{forms[m.group(0).lower()]}",
                                                       V.SIZE_ADJECTIVES[forms[m.group(0).lower()]])))


def _orientation(text: str, choice: Choice) -> str:
    forms = {w: o for o, words in T.ORIENTATION_PREDICATES.items() for w in words}
    forms.update({w: o for o, w in T.ORIENTATION_ADJECTIVES.items()})

    def swap(m: re.Match[str]) -> str:
        o = forms[m.group(1).lower()]
        # before a word it is an adjective ("an upside-down red bag"); before punctuation, a predicate
        new = V.ORIENT_ADJECTIVES[o] if m.group(2) else _pick(choice, f"orientation:{o}", V.ORIENT_PREDICATES[o])
        return keep_case(m.group(1), new) + (m.group(2) or "")

    return re.sub(rf"(?<![\w-])({_words(list(forms))})(?![\w-])( (?=[a-z]))?", swap, text, flags=re.IGNORECASE)


def _cell_phrase(choice: Choice, row: str, col: str) -> str:
    return _pick(choice, f"cell:{row}-{col}", V.CELL_WORDS[(row, col)])


def _cell(text: str, choice: Choice) -> str:
    r, c = f"(?P<r>{'|'.join(ROWS)})", f"(?P<c>{'|'.join(COLS)})"
    patterns = (  # the own grammar's cell phrases (templates.CELL_PHRASES) and edge phrases (segments.edge_phrase)
        rf"(?P<p>[Ii]n) the {r} {c} corner of the picture", rf"(?P<p>[Ii]n) the {r} {c} cell",
        rf"(?P<p>[Ii]n) the {r} row and {c} column", rf"(?P<p>[Ii]n) the {c} column of the {r} row",
        rf"(?P<p>[Ii]n) the {r}-{c} cell", r"(?P<p>[Aa]t) the very (?P<c>center) of the picture",
        rf"(?P<p>[Aa]long) the {c} edge of the picture, halfway down", rf"(?P<p>[Aa]long) the {r} edge of the picture, in the center",
    )

    def swap(m: re.Match[str]) -> str:
        groups = m.groupdict()
        row, col = groups.get("r") or "middle", groups.get("c") or "center"
        prep = {"along": "at", "at": "at", "in": "in"}[m.group("p").lower()]
        return f"{keep_case(m.group('p'), prep)} the {_cell_phrase(choice, row, col)}"

    for pattern in patterns:
        text = re.sub(pattern, swap, text)
    cells = "|".join(f"{row} {col}" for row in ROWS for col in COLS)

    def empty(m: re.Match[str]) -> str:
        names = re.findall(cells, m.group(1))
        phrases = [f"the {_cell_phrase(choice, *n.split())}" for n in names]
        listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return f"{listed[0].upper()}{listed[1:]} {'is' if len(phrases) == 1 else 'are'} empty."

    return re.sub(rf"The ((?:(?:{cells})(?:, | and )?)+) cells? (?:is|are) empty\.", empty, text)


def _relation(text: str, choice: Choice) -> str:
    steps = {"above": -1, "below": 1, "to the left of": -1, "to the right of": 1}
    forms = {f"directly {v}": (steps[v], 0) for v in ("above", "below")}
    forms |= {f"directly {h}": (0, steps[h]) for h in ("to the left of", "to the right of")}
    forms |= {f"{v} and {h}": (steps[v], steps[h]) for v in ("above", "below") for h in ("to the left of", "to the right of")}

    def swap(m: re.Match[str]) -> str:
        step = forms[m.group(0)]
        return _pick(choice, f"relation:{step}", V.RELATION_WORDS[step])

    return _sub(_words(list(forms)), text, swap)


def _texture(text: str, choice: Choice) -> str:
    return _sub(_words(list(V.TEXTURE_WORDS)), text,
                lambda m: keep_case(m.group(0), _pick(choice, f"texture:{m.group(0).lower()}",
                                                       V.TEXTURE_WORDS[m.group(0).lower()])))


def fix_articles(text: str) -> str:
    """"a" / "an" before each word as its first letter asks (the own grammar's rule: a vowel letter takes "an")."""
    return re.sub(r"(?<![\w-])([Aa])n? (?=([A-Za-z]))",
                  lambda m: (m.group(1) + ("n" if m.group(2).lower() in "aeiou" else "")) + " ", text)


REWRITES: dict[str, Callable[[str, Choice], str]] = {
    "class": _class, "size": _size, "orientation": _orientation, "cell": _cell, "relation": _relation,
    "texture": _texture,
}


def rewrite(text: str, factors: Sequence[str], choice: Choice) -> str:
    """``text`` (an own-style long caption) with the words of each factor in ``factors`` in the unseen grammar's.
    Cells before relations: "the left of" inside a relation is not a cell, but "in the top left cell" is."""
    for factor in sorted(factors, key=FACTORS.index):
        text = REWRITES[factor](text, choice)
    return fix_articles(text)


class _Choices(dict):
    """One draw per factor value, made the first time a caption asks for it: a group's captions share them."""

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.rng = rng

    def __missing__(self, key: str) -> int:
        self[key] = value = int(self.rng.integers(3))
        return value


def factor_items(items: Sequence[Item], factors: Sequence[str], seed: int) -> list[Item]:
    """``items`` with their long captions rewritten by ``rewrite``; one choice table per twin group."""
    unknown = sorted(set(factors) - set(FACTORS))
    if unknown or not factors:
        raise SystemExit(f"unknown factor(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(FACTORS)}")
    count = default_token_counter()
    out = list(items)
    for group in twin_groups(items):
        choice = _Choices(np.random.default_rng([seed, group[0]]))
        for i in group:
            text = rewrite(items[i].captions["long"], factors, choice)
            meta = dict(items[i].meta, caption_style="own+" + "+".join(factors), long_tokens=count(text))
            out[i] = replace(items[i], captions={**items[i].captions, "long": text}, meta=meta)
    return out


def write_variant(data: Path, out: Path, factors: Sequence[str], seed: int) -> Path:
    source = read_dataset(data)
    items = factor_items(source.items, factors, seed)
    prepare_out(out)
    for item in items:
        _place(source.image_path(item), out / item.image)
    write_items(out, items)  # last: a folder without items.jsonl is an unfinished run
    return out


VARIANTS: dict[str, tuple[str, ...]] = {**{f: (f,) for f in FACTORS}, "words": FACTORS}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m research.unseen_factors", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="an own-style scene corpus (val: choices are made there)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the variant corpora, one sub-folder each")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--seed", type=int, default=0, help="seed of the word choices (default 0)")
    ap.add_argument("--model", type=Path, help="a bundle: also score every variant against the own corpus")
    ap.add_argument("--unseen", type=Path, help="with --model: the same scenes restyled, scored as the last row")
    ap.add_argument("--threads", type=int, help="ONNX Runtime threads (default: every core)")
    ap.add_argument("--json", type=Path, help="also write the scores here")
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    if bad := [v for v in names if v not in VARIANTS]:
        ap.error(f"unknown variant(s) {', '.join(bad)}: choose from {', '.join(VARIANTS)}")
    folders = {v: write_variant(args.data, args.out / v, VARIANTS[v], args.seed) for v in names}
    if args.model is None:
        sys.stdout.write(f"wrote {', '.join(str(f) for f in folders.values())}\n")
        return
    from research.unseen_phrasing import run_many

    if args.unseen is not None:
        folders["unseen"] = args.unseen
    rows = dict(zip(folders, run_many(args.model, args.data, list(folders.values()), args.threads), strict=True))
    out = sys.stdout.write
    out(f"{'variant':<12} {'t2i R@1':>8} {'drop':>6} {'95%':>13} {'i2t R@1':>8} {'drop':>6}\n")
    for name, r in rows.items():
        t, i = r["t2i_r1"], r["i2t_r1"]
        lo, hi = t["drop_ci95"]
        out(f"{name:<12} {t['unseen']:8.3f} {t['drop']:6.0%} {lo:6.0%}..{hi:<5.0%} {i['unseen']:8.3f} {i['drop']:6.0%}\n")
    own = next(iter(rows.values()))
    out(f"{'own':<12} {own['t2i_r1']['own']:8.3f} {'':>6} {'':>13} {own['i2t_r1']['own']:8.3f}\n")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
