"""The alt caption grammar: every fact of the scene graph, read back from the text by a parser written here from
the words' meanings (not from the grammar's tables), in varied orders and constructions, none the own grammar's."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from llm2clip.data import generate_scenes
from llm2clip.data.captions import long_caption
from llm2clip.data.captions.alt import alt_caption
from llm2clip.data.scene_graph import (
    CLASSES,
    COLOURS,
    COLS,
    ORIENTATIONS,
    ROWS,
    SIZES,
    TEXTURES,
    TWIN_ATTRIBUTES,
    Background,
    SceneGraph,
    SceneObject,
)
from llm2clip.data.twins import TwinDiff, mutate

NOUNS = {
    "t-shirt": "t-shirt", "casual top": "t-shirt", "pair of trousers": "trouser", "pair of jeans": "trouser",
    "pullover": "pullover", "sweatshirt": "pullover", "dress": "dress", "one-piece": "dress", "coat": "coat",
    "sandal": "sandal", "shirt": "shirt", "sneaker": "sneaker", "plimsoll": "sneaker", "bag": "bag",
    "satchel": "bag", "clutch": "bag", "ankle boot": "ankle boot", "chelsea boot": "ankle boot",
}
SIZE = {"small": "small", "undersized": "small", "medium-sized": "medium", "moderately sized": "medium",
        "medium": "medium", "large": "large", "sizeable": "large"}
ORIENTATION = {
    "upright": "upright", "not flipped": "upright", "non-flipped": "upright", "in its usual pose": "upright",
    "upside down": "upside down", "upside-down": "upside down", "vertically flipped": "upside down",
    "vertically-flipped": "upside down", "turned bottom-up": "upside down",
    "mirrored": "mirrored", "mirror-image": "mirrored", "horizontally flipped": "mirrored",
    "flipped sideways": "mirrored",
}
TEXTURE = {
    "plain": "plain", "patternless": "plain", "no pattern": "plain", "without any pattern": "plain",
    "striped": "striped", "stripe-patterned": "striped", "stripes": "striped",
    "dotted": "dotted", "speckled": "dotted", "dots": "dotted",
    "checkered": "checkered", "chessboard-patterned": "checkered", "chessboard": "checkered",
}
ROW = {"top": "top", "uppermost": "top", "middle": "middle", "bottom": "bottom", "lowest": "bottom"}
COL = {"left": "left", "middle": "center", "right": "right", "left end": "left", "midpoint": "center",
       "right end": "right", "one": "left", "two": "center", "three": "right"}
NUMBER = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six"))} | {
    str(i): i for i in range(7)} | {"a single": 1, "just one": 1, "only one": 1, "that single": 1}
_R, _C = "(top|uppermost|middle|bottom|lowest)", "(left|middle|right)"
CELL_PATTERNS = (
    (re.compile(rf"the {_R}-{_C} square"), lambda m: (ROW[m[1]], COL[m[2]])),
    (re.compile(r"the (?:central|innermost) square"), lambda m: ("middle", "center")),
    (re.compile(rf"the (left end|midpoint|right end) of the {_R} row|the heart of the grid"),
     lambda m: (ROW[m[2]], COL[m[1]]) if m[1] else ("middle", "center")),
    (re.compile(rf"square (one|two|three) from the left in the {_R} row"), lambda m: (ROW[m[2]], COL[m[1]])),
)


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def find(text: str, table: dict[str, str]) -> list[str]:
    """Every word or phrase of ``table`` in ``text``, as its meaning; "shirt" is not found inside "t-shirt"."""
    return [table[m.group(1).lower()]
            for m in re.finditer(rf"(?<![\w-])({_alternation(table)})(?![\w-])", text, flags=re.IGNORECASE)]


def cells(text: str) -> list[tuple[str, str]]:
    found = []
    for pattern, meaning in CELL_PATTERNS:
        found += [(m.start(), meaning(m)) for m in pattern.finditer(text.lower())]
    return [c for _, c in sorted(found)]


def units(caption: str) -> list[str]:
    """Sentences, split further where one sentence joins two or more statements."""
    out = []
    for sentence in re.split(r"(?<=\.)\s+", caption.strip()):
        out += [u.strip(" .") for u in re.split(r"; |, while |, and |: ", sentence) if u.strip(" .")]
    return out


_REF = re.compile(rf"^the (?:({_alternation(SIZE)}) )?(?:({'|'.join(COLOURS)}) )?({_alternation(NOUNS)})(?: (?:in|at) (.+))?$",
                  flags=re.IGNORECASE)
_V = {"nearer the top": -1, "nearer the bottom": 1, "above": -1, "below": 1, "upward": -1, "downward": 1}
_H = {"nearer the left": -1, "nearer the right": 1, "left": -1, "right": 1, "leftward": -1, "rightward": 1}
RELATION_PATTERNS = (  # (name, pattern with groups a, b, v, h)
    ("compare", re.compile(r"^(?P<a>.+?) is (?P<v>nearer the top|nearer the bottom) and (?P<h>nearer the left|nearer the right) than (?P<b>.+)$")),
    ("compare", re.compile(r"^(?P<a>.+?) is in the same column as (?P<b>.+?), (?P<v>nearer the top|nearer the bottom)$")),
    ("compare", re.compile(r"^(?P<a>.+?) is in the same row as (?P<b>.+?), (?P<h>nearer the left|nearer the right)$")),
    ("has", re.compile(r"^(?P<b>.+?) has (?P<a>.+?) (?P<v>above|below) it(?: in the same column| and to its (?P<h>left|right))$")),
    ("has", re.compile(r"^(?P<b>.+?) has (?P<a>.+?) to its (?P<h>left|right) in the same row$")),
    ("seen", re.compile(r"^seen from (?P<b>.+?), (?P<a>.+?) lies (?:directly )?(?P<v>upward|downward)?(?: and )?(?P<h>leftward|rightward)?$")),
)


def resolve(ref: str, objects: tuple[SceneObject, ...]) -> int:
    """The one object a definite description fits; fails when it fits none or several."""
    m = _REF.match(ref)
    assert m, ref
    size, colour, noun, place = m.groups()
    fits = [i for i, o in enumerate(objects)
            if NOUNS[noun.lower()] == o.category and (size is None or SIZE[size.lower()] == o.size)
            and (colour is None or colour == o.colour) and (place is None or cells(place) == [(o.row, o.col)])]
    assert len(fits) == 1, (ref, fits)
    return fits[0]


def relation_of(unit: str) -> tuple[str, str, str, int, int] | None:
    for name, pattern in RELATION_PATTERNS:
        m = pattern.match(unit.lower())
        if m:
            g = m.groupdict()
            return name, g["a"], g["b"], _V.get(g.get("v") or "", 0), _H.get(g.get("h") or "", 0)
    return None


OTHER = re.compile(  # sentences that state no fact of the graph: list headers, the grid, "the picture is empty"
    r"reading the rows downward|reading the columns rightward|from the largest down|in turn|in no particular order"
    r"|the canvas is split into nine squares, three by three"
    r"|the picture forms nine squares in three rows of three"
    r"|other than that, the picture is empty|no second object appears anywhere"
)
COUNT = re.compile(rf"\b({_alternation(NUMBER)}) (?:fashion )?(?:objects?|items?)\b", re.IGNORECASE)


def _object(unit: str) -> tuple[str, ...]:
    parts = [find(unit, NOUNS), find(unit, {c: c for c in COLOURS}), find(unit, SIZE), find(unit, ORIENTATION),
             cells(unit)]
    assert all(len(p) == 1 for p in parts), (unit, parts)
    noun, colour, size, orientation, (row, col) = (p[0] for p in parts)
    return noun, colour, size, orientation, row, col


def _relation(unit: str, graph: SceneGraph) -> tuple[int, int] | None:
    rel = relation_of(unit)
    if rel is None:
        return None
    _, a, b, v, h = rel
    i, j = resolve(a, graph.objects), resolve(b, graph.objects)
    oi, oj = graph.objects[i], graph.objects[j]
    want = (np.sign(ROWS.index(oi.row) - ROWS.index(oj.row)), np.sign(COLS.index(oi.col) - COLS.index(oj.col)))
    assert (v, h) == want, unit
    return i, j


def read_facts(caption: str, graph: SceneGraph) -> dict:
    """What ``caption`` states, unit by unit: objects, background, count, relations (each checked against
    ``graph`` as it is read), and the kind of each unit. Fails on a unit it cannot read."""
    facts: dict = {"objects": Counter(), "background": [], "count": [], "relations": [], "kinds": []}
    for unit in units(caption):
        pair = _relation(unit, graph)
        if pair is not None:
            facts["relations"].append(pair)
            facts["kinds"].append(relation_of(unit)[0])
            continue
        if re.search(r"\b(no object appears in|are empty|is empty)\b", unit, re.I) and cells(unit):
            taken = {(o.row, o.col) for o in graph.objects}
            assert set(cells(unit)) == {(r, c) for r in ROWS for c in COLS} - taken, unit
            facts["kinds"].append("empty")
            continue
        kinds = []
        if re.search(r"\b(background|field)", unit, re.I):
            facts["background"].append((set(find(unit, {c: c for c in COLOURS})), set(find(unit, TEXTURE))))
            kinds.append("background")
        if COUNT.search(unit):
            facts["count"].append(NUMBER[COUNT.search(unit).group(1).lower()])
            kinds.append("count")
        if not kinds and cells(unit):
            facts["objects"][_object(unit)] += 1
            kinds.append("object")
        if not kinds:
            assert OTHER.fullmatch(unit.lower()), unit
            kinds.append("other")
        facts["kinds"].append("+".join(kinds))
    return facts


def check(caption: str, graph: SceneGraph) -> dict:
    """Assert that ``caption`` states exactly the facts of ``graph``; what it stated."""
    facts = read_facts(caption, graph)
    want = Counter((o.category, o.colour, o.size, o.orientation, o.row, o.col) for o in graph.objects)
    assert facts["objects"] == want, caption
    bg = graph.background
    assert facts["background"], caption
    assert all(b == ({bg.colour}, {bg.texture}) for b in facts["background"]), (facts["background"], caption)
    assert facts["count"] and set(facts["count"]) == {len(graph.objects)}, caption
    assert bool(facts["relations"]) == (len(graph.objects) >= 2), caption
    return facts


def random_graph(rng: np.random.Generator, lo: int = 1, hi: int = 6) -> SceneGraph:
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    others = [c for c in COLOURS if c != colour]
    objects = tuple(
        SceneObject(CLASSES[int(rng.integers(10))], others[int(rng.integers(len(others)))],
                    tuple(SIZES)[int(rng.integers(3))], ORIENTATIONS[int(rng.integers(3))], "top", "left").at_cell(int(c))
        for c in rng.choice(9, size=int(rng.integers(lo, hi + 1)), replace=False)
    )
    return SceneGraph(Background(colour, TEXTURES[int(rng.integers(len(TEXTURES)))]), objects)


@pytest.fixture(scope="module")
def scenes() -> list[tuple[SceneGraph, str]]:
    rng = np.random.default_rng(7)
    graphs = [random_graph(rng) for _ in range(400)]
    # look-alikes: same class and colour, told apart by size or square only
    twinned = [SceneGraph(g.background, (g.objects[0], g.objects[0].at_cell(8 - g.objects[0].cell)))
               for g in graphs[:40] if g.objects[0].cell != 4]
    return [(g, alt_caption(g, np.random.default_rng(i))) for i, g in enumerate(graphs + twinned)]
# ---------------------------------------------------------------- facts


def test_every_fact_is_stated_and_right(scenes):
    for graph, caption in scenes:
        check(caption, graph)


def test_the_checker_catches_a_changed_fact(scenes):
    # the checker above must fail when one word of a fact is wrong, else the test before proves nothing
    graph, caption = next((g, c) for g, c in scenes if len(g.objects) >= 2)
    obj = graph.objects[0]
    for wrong in (graph.with_object(0, obj.at_cell(next(c for c in range(9) if c not in {o.cell for o in graph.objects}))),
                  SceneGraph(Background(graph.background.colour, next(t for t in TEXTURES if t != graph.background.texture)),
                             graph.objects),
                  SceneGraph(graph.background, graph.objects[1:])):
        with pytest.raises(AssertionError):
            check(caption, wrong)



def test_lengths_are_those_of_the_own_long_captions(scenes):
    from llm2clip.data.captions import MAX_TOKENS, MIN_TOKENS, default_token_counter

    count = default_token_counter()
    lengths = [count(c) for _, c in scenes]
    assert MIN_TOKENS <= min(lengths) and max(lengths) <= MAX_TOKENS, (min(lengths), max(lengths))


@pytest.mark.parametrize("attribute", TWIN_ATTRIBUTES)
def test_near_twins_differ_in_the_changed_fact(attribute):
    rng = np.random.default_rng(TWIN_ATTRIBUTES.index(attribute))
    for p in range(40):
        graph = random_graph(rng, lo=2)
        k = int(rng.integers(len(graph.objects)))
        twin = mutate(rng, graph, TwinDiff(k, attribute), None, [graph.objects[k].attribute(attribute)])
        a, b = (read_facts(alt_caption(g, np.random.default_rng(p)), g) for g in (graph, twin))
        # the changed object is read back with its own value in each, the others as they were
        assert a["objects"] - b["objects"] == Counter([fact_tuple(graph.objects[k])])
        assert b["objects"] - a["objects"] == Counter([fact_tuple(twin.objects[k])])


def fact_tuple(o: SceneObject) -> tuple[str, ...]:
    return o.category, o.colour, o.size, o.orientation, o.row, o.col


# ---------------------------------------------------------------- variety and determinism


def test_same_stream_same_caption():
    graph = random_graph(np.random.default_rng(3), lo=4)
    assert alt_caption(graph, np.random.default_rng(11)) == alt_caption(graph, np.random.default_rng(11))
    assert len({alt_caption(graph, np.random.default_rng(s)) for s in range(10)}) == 10


def skeleton(unit: str) -> str:
    """A unit with its fact words blanked: what is left is its construction."""
    for pattern, _ in CELL_PATTERNS:
        unit = pattern.sub("#", unit.lower())
    for table in (NOUNS, SIZE, ORIENTATION, TEXTURE, NUMBER, {c: c for c in COLOURS}):
        unit = re.sub(rf"(?<![\w-])({_alternation(table)})(?![\w-])", "_", unit, flags=re.IGNORECASE)
    return re.sub(r"\b(a|an)\b", "a", unit)


def test_orders_and_constructions_vary(scenes):
    scenes = scenes[:200]
    facts = [read_facts(c, g) for g, c in scenes]
    kinds = Counter(k for f in facts for k in f["kinds"])
    assert {"compare", "has", "seen", "empty", "background+count"} <= set(kinds), kinds
    # where the count and the background come: first, together, after the objects
    openings = Counter(f["kinds"][0] for f in facts)
    assert {"count", "background", "background+count", "object"} <= set(openings), openings
    assert any(f["kinds"][-1] == "count" for f in facts) and any(f["kinds"][-1] == "background" for f in facts)
    # objects in several orders: the first described is sometimes the graph's first, sometimes not
    objects = [(u, g) for g, c in scenes for u in units(c) if cells(u) and find(u, NOUNS) and relation_of(u) is None]
    skeletons = Counter(skeleton(u) for u, _ in objects)
    assert len(skeletons) >= 12, skeletons
    first = [list(read_facts(c, g)["objects"])[0] == fact_tuple(g.objects[0]) for g, c in scenes if len(g.objects) > 2]
    assert 0.2 < np.mean(first) < 0.8
    # squares named in each of three ways (the centre square has a name of its own)
    styles = {i for _, c in scenes for i, (pattern, _) in enumerate(CELL_PATTERNS) if pattern.search(c.lower())}
    assert styles == {0, 1, 2, 3}


def test_no_sentence_of_the_own_grammar(scenes):
    own_sentences = 0
    for i, (graph, caption) in enumerate(scenes[:200]):
        own = long_caption(graph, np.random.default_rng(i), lambda t: int(len(t.split()) * 1.3)).text
        own_set = set(re.split(r"(?<=\.)\s+", own))
        own_sentences += len(own_set)
        assert not own_set & set(re.split(r"(?<=\.)\s+", caption)), (own, caption)
    assert own_sentences > 800  # the own captions were made and compared


# ---------------------------------------------------------------- the corpus and the command line


def test_scenes_with_alt_captions_keep_everything_else(tmp_path, capsys):
    from llm2clip.data import read_dataset
    from llm2clip.data.generator import SceneCaptions
    from llm2clip.errors import DatasetError
    from llm2clip_cli.main import main as cli

    plain = generate_scenes(tmp_path / "plain", 6, "val", seed=4, progress=False)
    alt = generate_scenes(tmp_path / "alt", 6, "val", seed=4, progress=False, captions=SceneCaptions(alt=1))
    assert cli(["data", "scenes", "--out", str(tmp_path / "cli"), "--n", "6", "--split", "val", "--seed", "4",
                "--alt-captions", "2", "--other-words", "1"]) == 0
    both = read_dataset(tmp_path / "cli")
    for a, b, c in zip(plain, alt, both, strict=True):
        assert set(b.captions) == {"long", "short", "long_a1"} and b.meta == a.meta
        assert {k: b.captions[k] for k in ("long", "short")} == a.captions
        assert (tmp_path / "alt" / b.image).read_bytes() == (tmp_path / "plain" / a.image).read_bytes()
        assert set(c.captions) == {"long", "short", "long_w1", "long_a1", "long_a2"}
        assert c.captions["long_a1"] == b.captions["long_a1"]  # same stream, whatever else is added
        assert c.captions["long_a1"] != c.captions["long_a2"]
        check(b.captions["long_a1"], SceneGraph.from_json(b.meta))
    with pytest.raises(DatasetError, match="non-negative"):
        SceneCaptions(alt=-1)
    with pytest.raises(DatasetError, match="with the own style"):
        SceneCaptions("unseen", alt=1)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli(["data", "scenes", "--out", str(tmp_path / "neg"), "--n", "2", "--split", "train", "--alt-captions", "-1"])
    assert exc.value.code == 2
    assert "argument --alt-captions: must be at least 0" in capsys.readouterr().err
    assert not (tmp_path / "neg").exists()
    with pytest.raises(SystemExit):
        cli(["data", "scenes", "--help"])
    assert "long_a1..N" in capsys.readouterr().out


def test_items_without_a_scene_graph_get_none():
    from llm2clip.data import Item
    from llm2clip.data.generator import add_alt_captions

    items = [Item(id="x", image="x.png", captions={"long": "a photo"}, meta={})]
    add_alt_captions(items, "train", 0, 2)
    assert items[0].captions == {"long": "a photo"}


def test_alt_in_place_replaces_a_share_of_the_long_captions(tmp_path, capsys):
    from llm2clip.data import read_dataset
    from llm2clip.data.captions import default_token_counter
    from llm2clip.data.generator import SceneCaptions
    from llm2clip.errors import DatasetError
    from llm2clip_cli.main import main as cli

    count = default_token_counter()
    plain = generate_scenes(tmp_path / "plain", 40, "train", seed=3, progress=False)
    extra = generate_scenes(tmp_path / "extra", 40, "train", seed=3, progress=False, captions=SceneCaptions(alt=1))
    assert cli(["data", "scenes", "--out", str(tmp_path / "half"), "--n", "40", "--split", "train", "--seed", "3",
                "--alt-in-place", "0.5"]) == 0
    half = read_dataset(tmp_path / "half")
    replaced = 0
    for a, b, c in zip(plain, extra, half, strict=True):
        assert set(c.captions) == {"long", "short"} and c.captions["short"] == a.captions["short"]
        assert (tmp_path / "half" / c.image).read_bytes() == (tmp_path / "plain" / a.image).read_bytes()
        if c.meta.get("long_style") == "alt":
            replaced += 1
            assert c.captions["long"] == b.captions["long_a1"] != a.captions["long"]
            assert c.meta["long_tokens"] == count(c.captions["long"])
            check(c.captions["long"], SceneGraph.from_json(c.meta))
        else:
            assert c.captions == a.captions and c.meta == a.meta
    assert 10 <= replaced <= 30  # about half of 40
    every = generate_scenes(tmp_path / "all", 5, "train", seed=3, progress=False,
                            captions=SceneCaptions(alt_in_place=1.0))
    assert all(it.meta["long_style"] == "alt" for it in every)
    for bad in (-0.1, 1.5, True):
        with pytest.raises(DatasetError, match="from 0 to 1"):
            SceneCaptions(alt_in_place=bad)
    with pytest.raises(DatasetError, match="one or the other"):
        SceneCaptions(alt=1, alt_in_place=0.5)
    with pytest.raises(DatasetError, match="with the train split"):
        generate_scenes(tmp_path / "val", 4, "val", seed=3, progress=False, captions=SceneCaptions(alt_in_place=0.5))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli(["data", "scenes", "--out", str(tmp_path / "neg"), "--n", "2", "--split", "train", "--alt-in-place", "2"])
    assert exc.value.code == 2
    assert "argument --alt-in-place: must be a number from 0 to 1" in capsys.readouterr().err
