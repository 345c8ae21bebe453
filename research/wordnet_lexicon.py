"""Other words for the training captions' attribute words, from WordNet (issue 14, diverse training captions).

The paper diversifies its training captions with recaptions by other models; the bundled 135M instruct LLM
cannot rewrite a caption faithfully (``research.llm_rewrites``), nor list synonyms of a word (asked for five
synonyms of "bag" it answers "bag, bag, bagel, bagel, bagel"). WordNet is a dictionary written by people, with
no knowledge of this project's caption grammars: it gives other words without copying the unseen grammar.

Each attribute word of the own grammar (class nouns, sizes, orientations, background textures) is tied here to
the WordNet senses that mean what the scene renders, chosen by reading the senses' glosses (the column
``why``). Its other words are the other lemmas of those synsets. A lemma is dropped when it names another word
of the table or contains another class's noun ("tee shirt" would read as the class shirt), so that no swap can
state a false fact. Positions and relations are left out: their WordNet lemmas are adverbs and adjectives that do
not fit the grammar's prepositional slots ("higher up" for "above").

    python -m research.wordnet_lexicon --wordnet /usr/share/wordnet --out llm2clip/data/captions/lexicon.json

The output is committed: the pipeline reads the JSON (``llm2clip.data.captions.lexical``), never WordNet. Debian's
``wordnet-base`` holds WordNet 3.0's database files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

# own-grammar word: ((WordNet lemma, part of speech, sense number), ...), with the gloss that decided it
SENSES: dict[str, tuple[tuple[tuple[str, str, int], ...], str]] = {
    "t-shirt": ((("t-shirt", "noun", 1),), "a close-fitting pullover shirt"),
    "trousers": ((("trouser", "noun", 1),), "a garment extending from the waist to the knee or ankle"),
    "pullover": ((("pullover", "noun", 1),), "a sweater that is put on by pulling it over the head"),
    "dress": ((("dress", "noun", 1),), "a one-piece garment for a woman; has skirt and bodice"),
    "coat": ((("coat", "noun", 1),), "an outer garment that has sleeves"),
    "sandal": ((("sandal", "noun", 1),), "a shoe consisting of a sole fastened by straps to the foot"),
    "shirt": ((("shirt", "noun", 1),), "a garment worn on the upper half of the body"),
    "sneaker": ((("sneaker", "noun", 1),), "a canvas shoe with a pliable rubber sole"),
    "bag": ((("bag", "noun", 1), ("bag", "noun", 4)),
            "a flexible container with a single opening; a container for money and small personal items"),
    "ankle boot": ((("boot", "noun", 1),), "footwear that covers the whole foot and lower leg"),
    "small": ((("small", "adj", 1),), "limited or below average in number or quantity or magnitude or extent"),
    "medium-sized": ((("medium-sized", "adj", 1),), "intermediate in size"),
    "large": ((("large", "adj", 1),), "above average in size or number or quantity or magnitude or extent"),
    "upright": ((("erect", "adj", 1),), "upright in position or posture"),
    "upside down": ((("upside-down", "adj", 1),), "in such a position that top and bottom are reversed"),
    "mirrored": ((("mirrored", "adj", 1),), "like or characteristic of a mirror image"),
    "striped": ((("striped", "adj", 1),), "marked or decorated with stripes"),
    "dotted": ((("dotted", "adj", 1),), "having a pattern of dots"),
    "checkered": ((("checkered", "adj", 1),), "patterned with alternating squares of color"),
    "plain": ((("plain", "adj", 3),), "lacking patterns especially in color"),
}
CLASS_WORDS = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")


class WordNet:
    """The synsets of WordNet 3.0's database files (``index.<pos>``, ``data.<pos>``), read directly."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        missing = [f"{kind}.{pos}" for pos in ("noun", "adj") for kind in ("index", "data")
                   if not (self.root / f"{kind}.{pos}").is_file()]
        if missing:
            raise FileNotFoundError(f"{self.root} has no {', '.join(missing)}: install Debian's wordnet-base "
                                    "(apt-get install --no-install-recommends wordnet-base) or pass --wordnet")
        self._index: dict[str, dict[str, list[str]]] = {}

    def offsets(self, lemma: str, pos: str) -> list[str]:
        """The synset offsets of ``lemma``, in WordNet's sense order (sense 1 first)."""
        if pos not in self._index:
            table: dict[str, list[str]] = {}
            for line in (self.root / f"index.{pos}").read_text(encoding="latin-1").splitlines():
                if line.startswith(" ") or not line.strip():
                    continue  # the licence header
                f = line.split()
                pointers = int(f[3])
                table[f[0]] = f[4 + pointers + 2:]
            self._index[pos] = table
        return self._index[pos].get(lemma.replace(" ", "_").lower(), [])

    def lemmas(self, lemma: str, pos: str, sense: int) -> list[str]:
        """The lemmas of sense ``sense`` (1-based) of ``lemma``, as words ("gym shoe", not "gym_shoe")."""
        offsets = self.offsets(lemma, pos)
        if not 1 <= sense <= len(offsets):
            raise KeyError(f"WordNet has {len(offsets)} {pos} senses of {lemma!r}, not {sense}")
        with open(self.root / f"data.{pos}", "rb") as fh:
            fh.seek(int(offsets[sense - 1]))
            fields = fh.readline().decode("latin-1").split(" | ")[0].split()
        count = int(fields[3], 16)
        words = [fields[4 + 2 * i] for i in range(count)]
        return [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ").lower() for w in words]


def plural(phrase: str) -> str:
    """English plural of a noun phrase's last word (the words of this table are regular)."""
    head, _, last = phrase.rpartition(" ")
    last = last + ("es" if re.search(r"(s|sh|ch|x)$", last) else "s")
    return f"{head} {last}".strip()


def _forbidden(word: str) -> set[str]:
    """Words a synonym of ``word`` may not be or contain: the rest of the table, and the other classes' nouns."""
    others = {w for w in SENSES if w != word}
    return others | {w.split()[-1] for w in CLASS_WORDS if w != word}


def build(wordnet: WordNet) -> dict[str, Any]:
    """{"synonyms": {own word: [other words]}, "forms": {own surface form: [its other surface forms]}, ...}."""
    synonyms: dict[str, list[str]] = {}
    for word, (senses, _) in SENSES.items():
        found: list[str] = []
        for lemma, pos, sense in senses:
            found += wordnet.lemmas(lemma, pos, sense)
        forbidden = _forbidden(word)
        own = {word, word.replace(" ", "-"), *(lemma.replace("_", " ") for lemma, _, _ in senses)}
        keep = []
        for other in dict.fromkeys(found):
            tokens = set(re.split(r"[ -]", other))
            if other in own or other in forbidden or tokens & forbidden:
                continue
            keep.append(other)
        synonyms[word] = keep
    return {"source": "WordNet 3.0 (Debian wordnet-base)", "senses": _senses_doc(), "synonyms": synonyms,
            "forms": surface_forms(synonyms)}


def surface_forms(synonyms: dict[str, list[str]]) -> dict[str, list[str]]:
    """How the own grammar writes each word -> what may replace it: nouns in the singular and the plural ("a pair
    of trousers" / "pairs of trousers"), "medium" beside "medium-sized", "upside-down" beside "upside down"."""
    forms: dict[str, list[str]] = {}
    for word, others in synonyms.items():
        if not others:
            continue
        if word in CLASS_WORDS:
            if word == "trousers":  # the grammar writes "pair(s) of trousers", and "trousers" alone
                forms["pair of trousers"] = [f"pair of {plural(o)}" for o in others]
                forms["pairs of trousers"] = [f"pairs of {plural(o)}" for o in others]
                forms["trousers"] = [plural(o) for o in others]
                continue
            forms[word] = others
            forms[plural(word)] = [plural(o) for o in others]
        elif word == "medium-sized":
            forms[word] = others
            forms["medium"] = others
        elif word == "upside down":
            forms[word] = others
            forms["upside-down"] = others
        else:
            forms[word] = others
    return forms


def _senses_doc() -> dict[str, Any]:
    return {word: {"senses": [f"{lemma}.{pos}.{sense}" for lemma, pos, sense in senses], "why": why}
            for word, (senses, why) in SENSES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.wordnet_lexicon", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"),
                        help="folder of WordNet 3.0's index.* and data.* files (default: Debian's wordnet-base)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    try:
        table = build(WordNet(args.wordnet))
    except (FileNotFoundError, KeyError) as e:
        sys.stderr.write(f"wordnet_lexicon: error: {e}\n")
        return 2
    args.out.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    covered = sum(1 for v in table["synonyms"].values() if v)
    sys.stdout.write(f"{covered} of {len(SENSES)} words have other words; {len(table['forms'])} surface forms "
                     f"-> {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
