"""The scene corpus of DATASET.md: Fashion-MNIST items on a 3 x 3 grid, with exact long captions.

``generate_scenes(out, n, split, seed)`` writes ``out/items.jsonl`` and ``out/images/NNNNNN.png``.
Same arguments, same bytes: every random draw comes from a ``numpy`` generator seeded by
``(seed, split, scene or pair index)``, so the first scenes of a split do not depend on ``n``
(test pairs aside: an odd ``n`` adds a third member to pair 0, which widens its captions'
referring expressions).

Rendering, in this order, so that another generator following DATASET.md can reproduce the
pixels: background (stripes start with the full colour at y = 0; dot centres at 8 + 16 i, a pixel
is in a dot when its squared distance to a centre is <= 9; the 16 px square at the top left has
the full colour; "70%" is ``round(0.7 * channel)``); then each object in ``meta["objects"]`` order:
flip the 28 x 28 image (``upside down``: rows, ``mirrored``: columns), resize it with PIL's
bilinear filter to its size, place its top-left corner at ``floor(centre - size / 2 + 0.5)``
with the cell centre at ``(index + 0.5) * 224 / 3``, clip it to the canvas and composite
``out = a * (a * colour) + (1 - a) * out`` with ``a = intensity / 255``, in float; the canvas is
rounded to uint8 once, at the end. A large item (96 px) is wider than its cell (74.67 px), so it
reaches into the neighbouring cells and, in an edge cell, past the canvas edge; DATASET.md fixes
both sizes, so we keep them and clip.

Long captions are measured with ``llm2clip.defaults.default_tokenizer()`` (SmolLM2, Llama family,
no special tokens); sentences are added (background detail, grid, an item's place on the canvas,
further relations, empty cells) until a caption reaches 60 tokens, and a caption over 250 is drawn
again. ``meta`` holds ``split``, ``background``, ``objects`` (class, colour, size, orientation,
row, col, fmnist_index; drawn in this order), ``relations`` (``{"subject", "object", "relation"}``,
object indices, as stated in the caption), ``long_tokens`` and, for ``test``, ``twin_of``,
``twin_diff`` (``{"object", "attribute"}``), ``twin_mention_token`` and ``twin_late``.

Choices where DATASET.md is silent:
- Counts, classes, colours, sizes, orientations, textures are uniform; cells are drawn without
  replacement; an object's colour is never the background's; colours may repeat across objects.
- ``val`` draws from the last 5,000 images of the Fashion-MNIST train split, ``train`` from the
  first 55,000, so validation photos are never training photos; ``test`` uses the test split.
- A one-object scene has no relation between two objects (there is no second one); its caption
  says where the item sits on the canvas (and which cells are empty) instead. Every scene with two or more objects states at
  least one pairwise relation; ``meta["relations"]`` lists each stated one.
- ``test`` needs ``n >= 2`` (every scene needs a twin). Scenes come in pairs (base, twin) that
  differ in one attribute of one object; for an odd ``n`` the last scene mutates the same
  attribute of the same object of scene 0 to a third value, so the three are mutual twins.
  Even-numbered pairs (and that third scene) have 3 to 6 objects and captions that mention the
  mutated object only after 77 tokens: its description comes last among the objects, everything
  that refers to it comes after, and sentences that do not depend on it (background, grid, other
  objects, their relations) fill the first 77 tokens. Referring expressions ("the small red
  sneaker") are made unique against the twins' objects too, so the early text of two twins says
  the same things. Odd-numbered pairs use the plain shuffled order, so the benchmark holds both
  early and late differences; ``meta["twin_late"]`` says which, ``meta["twin_mention_token"]``
  where the mutated object is first mentioned (tokens before it, Llama tokenizer, no special
  tokens).
- The differing attribute cycles through colour, class, size, orientation and cell from pair to
  pair (starting at ``seed % 5``), so each kind of difference is equally common and, as 2 and 5
  are coprime, each comes both early and late. A twin pair keeps the Fashion-MNIST photo of the
  mutated object unless the class changes.
"""

from __future__ import annotations

import gzip
import itertools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from llm2clip.data.dataset import ITEMS_FILE, Dataset, Item, write_items
from llm2clip.errors import DatasetError

CANVAS = 224
CELL = CANVAS / 3
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (50, 170, 70),
    "teal": (30, 150, 150),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "pink": (240, 130, 180),
    "brown": (140, 90, 50),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "black": (25, 25, 25),
}
COLOURS = tuple(PALETTE)
# Fashion-MNIST label order
CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
SIZES: dict[str, int] = {"small": 40, "medium": 64, "large": 96}
TEXTURES = ("plain", "striped", "dotted", "checkered")
ORIENTATIONS = ("upright", "upside down", "mirrored")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
SPLITS = ("train", "val", "test")
TWIN_ATTRIBUTES = ("colour", "class", "size", "orientation", "cell")
MIN_TOKENS, MAX_TOKENS = 60, 250
LATE_TOKEN = 77  # a CLIP text tower reads this many tokens
MAX_OBJECTS = 6
VAL_HOLDOUT = 5000  # last images of the Fashion-MNIST train split, kept for `val`
DARK = 0.7

NOUNS: dict[str, tuple[str, str]] = {
    "t-shirt": ("t-shirt", "t-shirts"),
    "trouser": ("pair of trousers", "pairs of trousers"),
    "pullover": ("pullover", "pullovers"),
    "dress": ("dress", "dresses"),
    "coat": ("coat", "coats"),
    "sandal": ("sandal", "sandals"),
    "shirt": ("shirt", "shirts"),
    "sneaker": ("sneaker", "sneakers"),
    "bag": ("bag", "bags"),
    "ankle boot": ("ankle boot", "ankle boots"),
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_EXTRA_UNIT = 2**31 - 1  # seed stream of the third member of test pair 0 (odd n)
_IMAGE_NAME = re.compile(r"^\d{6,}\.png$")

TokenCounter = Callable[[str], int]


# ---------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@lru_cache(maxsize=2)
def load_fashion_mnist(part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) of the Fashion-MNIST ``train`` or ``test`` split."""
    from llm2clip.defaults import fashion_mnist_dir

    prefix = {"train": "train", "test": "t10k"}[part]
    root = fashion_mnist_dir()
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise DatasetError(f"Fashion-MNIST files in {root} are malformed: reinstall dataset-fashion-mnist")
    return images, labels


def fashion_mnist_part(split: str) -> str:
    """The Fashion-MNIST split a scene split draws its photos from."""
    return "test" if split == "test" else "train"


def _class_pools(split: str) -> list[np.ndarray]:
    _, labels = load_fashion_mnist(fashion_mnist_part(split))
    lo, hi = 0, len(labels)
    if split == "train":
        hi -= VAL_HOLDOUT
    elif split == "val":
        lo = hi - VAL_HOLDOUT
    return [np.flatnonzero(labels[lo:hi] == c) + lo for c in range(len(CLASSES))]


# ---------------------------------------------------------------- rendering


def _dark(colour: Sequence[int]) -> np.ndarray:
    return np.round(np.asarray(colour, dtype=np.float64) * DARK)


def render_background(colour: str, texture: str) -> np.ndarray:
    """The (224, 224, 3) float64 background of DATASET.md."""
    base = np.asarray(PALETTE[colour], dtype=np.float64)
    canvas = np.empty((CANVAS, CANVAS, 3), dtype=np.float64)
    canvas[:] = base
    y, x = np.mgrid[0:CANVAS, 0:CANVAS]
    if texture == "striped":
        mask = (y // 8) % 2 == 1
    elif texture == "dotted":
        dy, dx = (y % 16) - 8, (x % 16) - 8
        mask = dy * dy + dx * dx <= 9
    elif texture == "checkered":
        mask = ((y // 16) + (x // 16)) % 2 == 1
    elif texture == "plain":
        return canvas
    else:
        raise DatasetError(f"unknown texture {texture!r}: expected one of {', '.join(TEXTURES)}")
    canvas[mask] = _dark(PALETTE[colour])
    return canvas


def object_intensity(image28: np.ndarray, size: str, orientation: str) -> np.ndarray:
    """The item's intensity (uint8, size x size): flipped, then resized bilinearly."""
    img = image28
    if orientation == "upside down":
        img = img[::-1, :]
    elif orientation == "mirrored":
        img = img[:, ::-1]
    px = SIZES[size]
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((px, px), Image.Resampling.BILINEAR))


def object_box(row: int, col: int, size: str) -> tuple[int, int]:
    """Top-left (y, x) of an item centred in its cell; may lie outside the canvas for large items."""
    half = SIZES[size] / 2
    return (int(np.floor((row + 0.5) * CELL - half + 0.5)), int(np.floor((col + 0.5) * CELL - half + 0.5)))


def render_scene(graph: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """The (224, 224, 3) uint8 picture of a scene graph; ``images`` holds the Fashion-MNIST photos."""
    bg = graph["background"]
    canvas = render_background(bg["colour"], bg["texture"])
    for obj in graph["objects"]:
        a = object_intensity(images[obj["fmnist_index"]], obj["size"], obj["orientation"]) / 255.0
        y0, x0 = object_box(ROWS.index(obj["row"]), COLS.index(obj["col"]), obj["size"])
        px = a.shape[0]
        # clip the item's box to the canvas: large items in edge cells stick out
        sy, sx = max(0, -y0), max(0, -x0)
        ey, ex = min(px, CANVAS - y0), min(px, CANVAS - x0)
        a = a[sy:ey, sx:ex, None]
        region = canvas[y0 + sy : y0 + ey, x0 + sx : x0 + ex]
        colour = np.asarray(PALETTE[obj["colour"]], dtype=np.float64)
        region[:] = a * (a * colour) + (1.0 - a) * region
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- scene graphs


def _draw_object(
    rng: np.random.Generator, pools: list[np.ndarray], bg_colour: str, cell: int
) -> dict[str, Any]:
    cls = int(rng.integers(len(CLASSES)))
    colours = [c for c in COLOURS if c != bg_colour]
    return {
        "class": CLASSES[cls],
        "colour": colours[int(rng.integers(len(colours)))],
        "size": tuple(SIZES)[int(rng.integers(len(SIZES)))],
        "orientation": ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))],
        "row": ROWS[cell // 3],
        "col": COLS[cell % 3],
        "fmnist_index": int(pools[cls][int(rng.integers(len(pools[cls])))]),
    }


def _draw_scene(rng: np.random.Generator, pools: list[np.ndarray], lo: int, hi: int) -> dict[str, Any]:
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    count = int(rng.integers(lo, hi + 1))
    cells = rng.choice(9, size=count, replace=False)
    objects = [_draw_object(rng, pools, colour, int(c)) for c in cells]
    return {"background": {"colour": colour, "texture": texture}, "objects": objects}


def _cell(obj: dict[str, Any]) -> int:
    return ROWS.index(obj["row"]) * 3 + COLS.index(obj["col"])


def _attribute(obj: dict[str, Any], attribute: str) -> Any:
    return _cell(obj) if attribute == "cell" else obj[attribute]


def _mutate(
    rng: np.random.Generator,
    graph: dict[str, Any],
    k: int,
    attribute: str,
    pools: list[np.ndarray] | None,
    taken: Sequence[Any],
) -> dict[str, Any]:
    """A copy of ``graph`` whose object ``k`` has a new ``attribute`` value, none of ``taken``."""
    objects = [dict(o) for o in graph["objects"]]
    obj = objects[k]
    if attribute == "colour":
        values: list[Any] = [c for c in COLOURS if c != graph["background"]["colour"]]
    elif attribute == "class":
        values = list(CLASSES)
    elif attribute == "size":
        values = list(SIZES)
    elif attribute == "orientation":
        values = list(ORIENTATIONS)
    else:
        used = {_cell(o) for i, o in enumerate(objects) if i != k}
        values = [c for c in range(9) if c not in used]
    values = [v for v in values if v not in taken]
    value = values[int(rng.integers(len(values)))]
    if attribute == "cell":
        obj["row"], obj["col"] = ROWS[value // 3], COLS[value % 3]
    elif attribute == "class":
        obj["class"] = value
        if pools is not None:  # None: text only, no picture is drawn from the graph
            pool = pools[CLASSES.index(value)]
            obj["fmnist_index"] = int(pool[int(rng.integers(len(pool)))])
    else:
        obj[attribute] = value
    return {"background": dict(graph["background"]), "objects": objects}


# ---------------------------------------------------------------- captions


def _an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{_an(phrase)} {phrase}"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


_SIZE_WORDS = {"small": ("small",), "medium": ("medium-sized", "medium"), "large": ("large",)}
_ORIENT_PRED = {
    "upright": ("upright", "standing upright", "shown upright"),
    "upside down": ("upside down", "turned upside down", "flipped upside down"),
    "mirrored": ("mirrored", "shown mirrored", "mirrored horizontally"),
}
_ORIENT_ADJ = {"upright": "upright", "upside down": "upside-down", "mirrored": "mirrored"}
_CELL_PHRASES = (
    "in the {row} {col} cell",
    "in the {row} row and {col} column",
    "in the {col} column of the {row} row",
    "in the {row}-{col} cell",
)
_OBJECT_TEMPLATES = (
    "{A_size} {colour} {noun} sits {cell}, {orient}.",
    "{Cell}, there is {a_size} {colour} {noun} that is {orient}.",
    "{A_colour} {noun}, {size} and {orient}, is placed {cell}.",
    "{Cell} is {a_adj} {size} {colour} {noun}.",
    "You can see {a_size} {colour} {noun} {cell}; it is {orient}.",
    "There is {a_size}, {adj} {colour} {noun} {cell}.",
)
_RELATION_TEMPLATES = (
    "{A} is {rel} {b}.",
    "{A} appears {rel} {b}.",
    "Looking at the layout, {a} is {rel} {b}.",
    "{B} lies {inv} {a}.",
)
_TEXTURE_DETAIL = {
    "plain": "The {c} background is a flat colour with no pattern.",
    "striped": "The background stripes run horizontally, alternating {c} with a darker {c}.",
    "dotted": "Darker {c} dots are spread over the background in a regular pattern.",
    "checkered": "The background squares alternate between {c} and a darker {c}.",
}


def relation(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Where ``a`` lies relative to ``b``, from their cells ("directly above", "below and to the left of")."""
    dr = ROWS.index(a["row"]) - ROWS.index(b["row"])
    dc = COLS.index(a["col"]) - COLS.index(b["col"])
    vertical = "above" if dr < 0 else "below" if dr > 0 else ""
    horizontal = "to the left of" if dc < 0 else "to the right of" if dc > 0 else ""
    if not vertical:
        return f"directly {horizontal}"
    if not horizontal:
        return f"directly {vertical}"
    return f"{vertical} and {horizontal}"


def _noun(cls: str, plural: bool = False) -> str:
    return NOUNS[cls][1 if plural else 0]


def _cell_name(obj: dict[str, Any]) -> str:
    return f"{obj['row']} {obj['col']}"


def _object_sentence(obj: dict[str, Any], rng: np.random.Generator) -> str:
    size = _pick(rng, _SIZE_WORDS[obj["size"]])
    cell = _pick(rng, _CELL_PHRASES).format(row=obj["row"], col=obj["col"])
    adj = _ORIENT_ADJ[obj["orientation"]]
    template = _pick(rng, _OBJECT_TEMPLATES)
    text = template.format(
        A_size=_cap(_with_article(size)),
        a_size=_with_article(size),
        A_colour=_cap(_with_article(obj["colour"])),
        a_adj=_with_article(adj),
        adj=adj,
        size=size,
        colour=obj["colour"],
        noun=_noun(obj["class"]),
        cell=cell,
        Cell=_cap(cell),
        orient=_pick(rng, _ORIENT_PRED[obj["orientation"]]),
    )
    return _cap(text)


_REF_KEYS = (("colour", "class"), ("size", "colour", "class"), ("size", "colour", "class", "orientation"))


def _referring(obj: dict[str, Any], distractors: Sequence[dict[str, Any]], start: int) -> str:
    """A short description of ``obj`` that fits none of ``distractors`` ("the small red sneaker")."""
    for keys in _REF_KEYS[start:]:
        if not any(all(d[key] == obj[key] for key in keys) for d in distractors):
            words = ["the"]
            if "orientation" in keys:
                words.append(_ORIENT_ADJ[obj["orientation"]])
            if "size" in keys:
                words.append(obj["size"])
            words += [obj["colour"], _noun(obj["class"])]
            return " ".join(words)
    # same look, different cell: the cell is the only thing that tells them apart
    return f"the {obj['colour']} {_noun(obj['class'])} in the {_cell_name(obj)} cell"


def _edge_phrase(obj: dict[str, Any]) -> str:
    row, col = obj["row"], obj["col"]
    if row != "middle" and col != "center":
        return f"in the {row} {col} corner of the picture"
    if row == "middle" and col == "center":
        return "at the very center of the picture"
    if row == "middle":
        return f"along the {col} edge of the picture, halfway down"
    return f"along the {row} edge of the picture, in the center"


@dataclass
class _Segment:
    text: str
    refs: frozenset[int]  # objects the sentence depends on
    relation: dict[str, Any] | None = None
    fixed: bool = False  # object descriptions and the opening keep their order


@dataclass
class LongCaption:
    text: str
    tokens: int
    relations: list[dict[str, Any]]
    mention: int | None  # tokens before the first sentence that depends on the watched object


def _relation_segment(
    a: int, b: int, objects: list[dict[str, Any]], refs: list[str], rng: np.random.Generator
) -> _Segment:
    template = _pick(rng, _RELATION_TEMPLATES)
    rel = relation(objects[a], objects[b])
    inv = relation(objects[b], objects[a])
    text = template.format(A=_cap(refs[a]), a=refs[a], B=_cap(refs[b]), b=refs[b], rel=rel, inv=inv)
    # the sentence states "subject <relation> object"; the inverse template swaps them
    subject, other, said = (b, a, inv) if "{B}" in template else (a, b, rel)
    return _Segment(text, frozenset((a, b)), {"subject": subject, "object": other, "relation": said})


def _long_caption(
    graph: dict[str, Any],
    rng: np.random.Generator,
    count_tokens: TokenCounter,
    distractors: list[list[dict[str, Any]]],
    late: int | None,
    watch: int | None,
    compact: bool,
) -> LongCaption | None:
    """One draw of a long caption, or None when it misses its length (or lateness) target."""
    objects = graph["objects"]
    n = len(objects)
    bg = graph["background"]
    colour, texture = bg["colour"], bg["texture"]
    every = frozenset(range(n))
    number = NUMBERS[n]
    things = "item" if n == 1 else "items"

    # -- the opening and the background
    bg_phrase = _pick(
        rng,
        (
            f"a {texture} {colour} background",
            f"{_an(colour)} {colour}, {texture} background",
            f"a {texture} background in {colour}",
        ),
    )
    if n == 1:
        intro_alone = _pick(
            rng, ("A single item is shown.", "The picture holds one item.", "There is only one item here.")
        )
        intro_with = _pick(
            rng, (f"A single item is shown on {bg_phrase}.", f"The picture holds one item on {bg_phrase}.")
        )
    else:
        intro_alone = _pick(
            rng,
            (
                f"{_cap(number)} items are laid out on a three by three grid.",
                f"The picture shows {number} items.",
                f"{_cap(number)} items appear in this image, each in its own cell of a 3 x 3 grid.",
            ),
        )
        intro_with = _pick(
            rng,
            (
                f"{_cap(number)} items are shown on {bg_phrase}.",
                f"The picture shows {number} items on {bg_phrase}.",
            ),
        )
    bg_sentence = _pick(
        rng,
        (
            f"The background is {texture} {colour}.",
            f"Everything sits on {bg_phrase}.",
            f"Behind the {things} is {bg_phrase}.",
        ),
    )
    # most captions open with the count; the others state it somewhere later
    opening = rng.random() < 0.7
    combined = opening and bool(rng.integers(2))
    segments: list[_Segment] = []
    if opening:
        segments.append(_Segment(intro_with if combined else intro_alone, frozenset(), fixed=True))

    # -- objects, in shuffled order; the watched object last when it must be mentioned late
    order = [int(i) for i in rng.permutation(n)]
    if late is not None:
        order.remove(late)
        order.append(late)
    for i in order:
        segments.append(_Segment(_object_sentence(objects[i], rng), frozenset((i,)), fixed=True))

    refs = [_referring(objects[i], distractors[i], int(rng.integers(2))) for i in range(n)]
    pairs = [(int(a), int(b)) for a, b in itertools.combinations(range(n), 2)]
    pairs = [pairs[int(j)] for j in rng.permutation(len(pairs))]
    pairs = [(b, a) if rng.integers(2) else (a, b) for a, b in pairs]
    n_core = 0 if not pairs else 1 if compact else int(rng.integers(1, min(3, len(pairs)) + 1))

    core: list[_Segment] = [_relation_segment(a, b, objects, refs, rng) for a, b in pairs[:n_core]]
    if not combined:
        core.append(_Segment(bg_sentence, frozenset()))
    if not opening:
        closing = (
            ("In all, the picture holds one item.", "That makes one item in all.")
            if n == 1
            else (f"In all, there are {number} items.", f"Altogether the picture holds {number} items.")
        )
        # "in all" reads right only once the objects have been described
        core.append(_Segment(_pick(rng, closing), every))

    fillers: list[_Segment] = [
        _Segment(_TEXTURE_DETAIL[texture].format(c=colour), frozenset()),
        _Segment(
            _pick(
                rng,
                (
                    "The canvas is divided into a three by three grid, with at most one item in each cell.",
                    "The picture is split into nine equal cells, three rows by three columns.",
                ),
            ),
            frozenset(),
        ),
    ]
    fillers += [
        _Segment(f"{_cap(refs[i])} is {_edge_phrase(objects[i])}.", frozenset((i,))) for i in range(n)
    ]
    fillers += [_relation_segment(a, b, objects, refs, rng) for a, b in pairs[n_core:]]
    empty = [f"{ROWS[c // 3]} {COLS[c % 3]}" for c in range(9) if c not in {_cell(o) for o in objects}]
    fillers.append(_Segment(f"The {_join(empty)} cells are empty.", every))
    if n == 1:
        fillers.append(_Segment("No other item appears in the picture.", every))
    fillers = [fillers[int(j)] for j in rng.permutation(len(fillers))]

    def place(seq: list[_Segment], seg: _Segment) -> None:
        # after the opening and after the descriptions of the objects it names
        lo = max(
            (j + 1 for j, s in enumerate(seq) if s.fixed and (s.refs & seg.refs or not s.refs)), default=0
        )
        hi = len(seq)
        if late is not None and late not in seg.refs:
            hi = next(j for j, s in enumerate(seq) if late in s.refs)
        seq.insert(int(rng.integers(lo, hi + 1)), seg)

    for seg in core:
        place(segments, seg)

    def text_of(seq: list[_Segment]) -> str:
        return " ".join(s.text for s in seq)

    def tokens_before(seq: list[_Segment], obj: int) -> int:
        first = next(j for j, s in enumerate(seq) if obj in s.refs)
        return count_tokens(text_of(seq[:first]))

    if late is not None:
        # fill the first 77 tokens with sentences that do not depend on the late object
        early = [f for f in fillers if late not in f.refs]
        fillers = [f for f in fillers if late in f.refs]
        while tokens_before(segments, late) < LATE_TOKEN:
            if not early:
                return None
            place(segments, early.pop())
        fillers = early + fillers
    while count_tokens(text_of(segments)) < MIN_TOKENS:
        if not fillers:
            return None
        place(segments, fillers.pop())
    text = text_of(segments)
    tokens = count_tokens(text)
    if tokens > MAX_TOKENS:
        return None
    mention = tokens_before(segments, watch) if watch is not None else None
    relations = [s.relation for s in segments if s.relation is not None]
    return LongCaption(text=text, tokens=tokens, relations=relations, mention=mention)


def long_caption(
    graph: dict[str, Any],
    rng: np.random.Generator,
    count_tokens: TokenCounter,
    distractors: list[list[dict[str, Any]]] | None = None,
    late: int | None = None,
    watch: int | None = None,
) -> LongCaption:
    """Draw long captions until one is 60..250 tokens (and mentions ``late`` after 77 tokens)."""
    objects = graph["objects"]
    if distractors is None:
        distractors = [[o for j, o in enumerate(objects) if j != i] for i in range(len(objects))]
    for attempt in range(64):
        cap = _long_caption(graph, rng, count_tokens, distractors, late, watch, compact=attempt >= 16)
        if cap is not None:
            return cap
    raise DatasetError(f"could not phrase a long caption of {MIN_TOKENS}..{MAX_TOKENS} tokens for {graph}")


def short_caption(graph: dict[str, Any]) -> str:
    """Count and categories in at most 15 words ("three items: two sneakers and a bag, on a ...")."""
    objects = graph["objects"]
    counts = Counter(o["class"] for o in objects)
    classes = sorted(counts, key=lambda c: (-counts[c], CLASSES.index(c)))
    with_article = [
        _with_article(_noun(c)) if counts[c] == 1 else f"{NUMBERS[counts[c]]} {_noun(c, True)}"
        for c in classes
    ]
    # where words are scarce: no article before a single item, "trousers" for one pair
    bare = [
        ("trousers" if c == "trouser" else _noun(c))
        if counts[c] == 1
        else f"{NUMBERS[counts[c]]} {_noun(c, True)}"
        for c in classes
    ]
    n = len(objects)
    head = f"{NUMBERS[n]} item{'' if n == 1 else 's'}:"
    bg = graph["background"]
    candidates = [
        f"{head} {_join(with_article)}, on a {bg['texture']} {bg['colour']} background",
        f"{head} {_join(bare)}, on a {bg['texture']} {bg['colour']} background",
        f"{head} {_join(with_article)}",
    ]
    for text in candidates:
        if len(text.split()) <= 15:
            return text
    return f"{head} {_join(bare)}"


_TWIN_STREAM = 4  # spawn key of stage 1's hard-negative twins
_PARAPHRASE_STREAM = 3  # spawn key of paraphrase draws: apart from the scene (0) and caption (1) streams


@lru_cache(maxsize=1)
def _shared_tokens_counter() -> TokenCounter:
    # loading the tokenizer costs more than phrasing a caption; paraphrasing a corpus calls this per item
    return _tokens_counter()


def paraphrase_long(
    meta: dict[str, Any],
    seed: int,
    count_tokens: TokenCounter | None = None,
    avoid: Sequence[str] = (),
) -> str:
    """Another long caption of the scene graph in ``meta`` (an item's meta): same facts, new phrasing and order.

    Drawn by the same machinery as the corpus's own long captions, so it describes every object with all
    its attributes (class, colour, size, orientation, cell), the background, and 60..250 tokens' worth of
    relations and details. ``seed`` picks the phrasing; a draw equal to a text in ``avoid`` (e.g. the
    item's own caption) is drawn again. Referring expressions only consider the scene's own objects (a test
    scene's twins are not in ``meta``), which is all a caption of that picture needs.
    """
    graph = {"background": meta["background"], "objects": meta["objects"]}
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PARAPHRASE_STREAM,)))
    count = count_tokens or _shared_tokens_counter()
    text = long_caption(graph, rng, count).text
    for _ in range(16):
        if text not in avoid:
            break
        text = long_caption(graph, rng, count).text
    return text


def near_twin_graph(meta: dict[str, Any], seed: int) -> dict[str, Any]:
    """The scene graph in ``meta`` with one attribute of one object changed: a near twin's facts, no image.

    The object and the attribute (colour, class, size, orientation or cell) are drawn from ``seed``, the new
    value as the test split's twins draw theirs. Stage 1 uses its captions (``paraphrase_long``) as hard
    negatives: texts that differ from the scene's own in a single fact.
    """
    graph = {"background": meta["background"], "objects": meta["objects"]}
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_TWIN_STREAM,)))
    k = int(rng.integers(len(graph["objects"])))
    attribute = TWIN_ATTRIBUTES[int(rng.integers(len(TWIN_ATTRIBUTES)))]
    return _mutate(rng, graph, k, attribute, None, [_attribute(graph["objects"][k], attribute)])


# ---------------------------------------------------------------- the generator


def _rng(seed: int, split: str, stream: int, unit: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_CODE[split], stream, unit)))


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / ITEMS_FILE).is_file():
            raise DatasetError(
                f"{out} is not empty and holds no {ITEMS_FILE}: refusing to write a scene corpus into it "
                "(choose an empty or new folder)"
            )
        # a previous corpus: drop its images so that a smaller n leaves none behind
        images = out / "images"
        if images.is_dir():
            for path in images.iterdir():
                if _IMAGE_NAME.match(path.name) and path.is_file():
                    path.unlink()
        (out / ITEMS_FILE).unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)


def _tokens_counter() -> TokenCounter:
    from llm2clip.defaults import default_tokenizer

    tok = default_tokenizer()
    return lambda text: len(tok.encode(text, add_special_tokens=False))


@dataclass
class _Scene:
    graph: dict[str, Any]
    twins: list[int] = field(default_factory=list)
    diff: dict[str, Any] | None = None
    late: bool = False


def _test_scenes(n: int, seed: int, pools: list[np.ndarray]) -> list[_Scene]:
    scenes: list[_Scene] = []
    for p in range(n // 2):
        rng = _rng(seed, "test", 0, p)
        late = p % 2 == 0
        base = _draw_scene(rng, pools, 3 if late else 1, MAX_OBJECTS)
        k = int(rng.integers(len(base["objects"])))
        # attributes take turns, so each kind of difference is equally common in a benchmark
        attribute = TWIN_ATTRIBUTES[(p + seed) % len(TWIN_ATTRIBUTES)]
        twin = _mutate(rng, base, k, attribute, pools, [_attribute(base["objects"][k], attribute)])
        diff = {"object": k, "attribute": attribute}
        scenes.append(_Scene(base, [2 * p + 1], diff, late))
        scenes.append(_Scene(twin, [2 * p], dict(diff), late))
    if n % 2:
        rng = _rng(seed, "test", 0, _EXTRA_UNIT)
        first, second = scenes[0], scenes[1]
        assert first.diff is not None
        k, attribute = first.diff["object"], first.diff["attribute"]
        taken = [_attribute(s.graph["objects"][k], attribute) for s in (first, second)]
        third = _mutate(rng, first.graph, k, attribute, pools, taken)
        scenes.append(_Scene(third, [0, 1], dict(first.diff), True))
        first.twins.append(n - 1)
        second.twins.append(n - 1)
    return scenes


def generate_scenes(out: Path | str, n: int, split: str, seed: int, progress: bool = True) -> Dataset:
    """Write ``n`` scenes of ``split`` (DATASET.md) to ``out``; same arguments, same bytes."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DatasetError(f"--n must be a positive number of scenes, got {n!r}")
    if split == "test" and n < 2:
        raise DatasetError("the test split needs --n 2 or more: every test scene has a near twin")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"--seed must be a non-negative integer, got {seed!r}")
    out = Path(out)
    _prepare_out(out)

    images, _ = load_fashion_mnist(fashion_mnist_part(split))
    pools = _class_pools(split)
    count_tokens = _tokens_counter()
    if split == "test":
        scenes = _test_scenes(n, seed, pools)
    else:
        scenes = [_Scene(_draw_scene(_rng(seed, split, 0, i), pools, 1, MAX_OBJECTS)) for i in range(n)]

    width = max(6, len(str(n - 1)))
    ids = [f"scene-{split}-{i:0{width}d}" for i in range(n)]
    items: list[Item] = []
    for i, scene in enumerate(tqdm(scenes, desc=f"scenes ({split})", unit="scene", disable=not progress)):
        graph = scene.graph
        objects = graph["objects"]
        distractors = [[o for j, o in enumerate(objects) if j != m] for m in range(len(objects))]
        k = scene.diff["object"] if scene.diff else None
        if k is not None:
            # the twins' versions of the mutated object count as distractors for the others, so the
            # words that pick out an unchanged object are the same in every twin's caption
            variants = [scenes[t].graph["objects"][k] for t in scene.twins]
            distractors = [d + variants if m != k else d for m, d in enumerate(distractors)]
        cap = long_caption(
            graph, _rng(seed, split, 1, i), count_tokens, distractors, k if scene.late else None, k
        )
        image = f"images/{i:0{width}d}.png"
        Image.fromarray(render_scene(graph, images)).save(out / image, format="PNG")
        meta: dict[str, Any] = {
            "split": split,
            "background": graph["background"],
            "objects": objects,
            "relations": cap.relations,
            "long_tokens": cap.tokens,
        }
        if scene.diff is not None:
            meta["twin_of"] = [ids[t] for t in scene.twins]
            meta["twin_diff"] = scene.diff
            meta["twin_mention_token"] = cap.mention
            meta["twin_late"] = cap.mention is not None and cap.mention >= LATE_TOKEN
        items.append(
            Item(
                id=ids[i], image=image, captions={"long": cap.text, "short": short_caption(graph)}, meta=meta
            )
        )
    # written last: a folder without items.jsonl is an unfinished run
    write_items(out, items)
    return Dataset(root=out, items=items)
