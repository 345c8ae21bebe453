"""The scene corpus of DATASET.md: Fashion-MNIST items on a 3 x 3 grid, with exact long captions.

``generate_scenes(out, n, split, seed)`` writes ``out/items.jsonl`` and ``out/images/NNNNNN.png``.
Same arguments, same bytes: every random draw comes from a stream of ``streams``, so the first
scenes of a split do not depend on ``n`` (test pairs aside: an odd ``n`` adds a third member to
pair 0, which widens its captions' referring expressions).

``meta`` holds ``split``, ``background``, ``objects`` (class, colour, size, orientation, row, col,
fmnist_index; drawn in this order), ``relations`` (``{"subject", "object", "relation"}``, object
indices, as stated in the caption), ``long_tokens`` and, for ``val`` and ``test``, ``twin_of``, ``twin_diff``
(``{"object", "attribute"}``), ``twin_mention_token`` and ``twin_late``; with
``captions="unseen"`` also ``caption_style: "unseen"`` (own-style items carry no such key, so
their bytes stay as they were); a train item whose long caption ``alt_in_place`` put in the alt grammar carries
``long_style: "alt"``.

Choices where DATASET.md is silent (see also ``scene_graph``, ``fashion_mnist`` and ``captions``):
- ``val`` is built exactly as ``test`` (from its own random streams and its own photos, the held-out
  end of the Fashion-MNIST train split), so that every choice of a recipe can be made on near twins
  without looking at ``test``; ``train`` has no twins.
- ``val`` and ``test`` need ``n >= 2`` (every scene needs a twin). Scenes come in pairs (base, twin) that
  differ in one attribute of one object; for an odd ``n`` the last scene mutates the same
  attribute of the same object of scene 0 to a third value, so the three are mutual twins.
  Even-numbered pairs (and that third scene) have 3 to 6 objects and captions that mention the
  mutated object only after 77 tokens. Referring expressions ("the small red sneaker") are made
  unique against the twins' objects too, so the early text of two twins says the same things.
  Odd-numbered pairs use the plain shuffled order, so the benchmark holds both early and late
  differences; ``meta["twin_late"]`` says which, ``meta["twin_mention_token"]`` where the mutated
  object is first mentioned (tokens before it, Llama tokenizer, no special tokens).
- The differing attribute cycles through colour, class, size, orientation and cell from pair to
  pair (starting at ``seed % 5``), so each kind of difference is equally common and, as 2 and 5
  are coprime, each comes both early and late.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from llm2clip.data.captions import (
    LATE_TOKEN,
    LongCaption,
    TokenCounter,
    default_token_counter,
    long_caption,
    short_caption,
)
from llm2clip.data.captions.alt import alt_caption
from llm2clip.data.captions.lexical import relexicalise
from llm2clip.data.captions.unseen import STYLE as UNSEEN_STYLE
from llm2clip.data.captions.unseen import restyle_items
from llm2clip.data.dataset import ITEMS_FILE, Dataset, Item, write_items
from llm2clip.data.fashion_mnist import class_pools, fashion_mnist_part, load_fashion_mnist
from llm2clip.data.render import render_scene
from llm2clip.data.scene_graph import (
    MAX_OBJECTS,
    TWIN_ATTRIBUTES,
    ClassPools,
    SceneGraph,
    SceneObject,
    draw_scene,
)
from llm2clip.data.streams import (
    ALT,
    ALT_IN_PLACE,
    CAPTION,
    EXTRA_UNIT,
    OTHER_WORDS,
    SCENE,
    SPLIT_CODES,
    split_rng,
)
from llm2clip.data.twins import TwinDiff, mutate
from llm2clip.errors import DatasetError

SPLITS = tuple(SPLIT_CODES)
CAPTION_STYLES = ("own", UNSEEN_STYLE)  # own: what training reads; unseen: an evaluation-only grammar
OTHER_WORDS_P = 0.5  # each attribute word of a caption in other words is swapped with this probability
TWIN_SPLITS = ("val", "test")  # splits whose scenes come in near-twin pairs
LATE_MIN_OBJECTS = 3  # a late pair needs other objects to fill the first 77 tokens
_IMAGE_NAME = re.compile(r"^\d{6,}\.png$")


@dataclass
class PlannedScene:
    """A scene's graph and, in the val and test splits, its twins (scene indices) and what tells them apart."""

    graph: SceneGraph
    twins: list[int] = field(default_factory=list)
    diff: TwinDiff | None = None
    late: bool = False  # the caption mentions the mutated object after LATE_TOKEN tokens


def _twin_pair(seed: int, split: str, p: int, pools: ClassPools) -> tuple[PlannedScene, PlannedScene]:
    rng = split_rng(seed, split, SCENE, p)
    late = p % 2 == 0
    base = draw_scene(rng, pools, LATE_MIN_OBJECTS if late else 1, MAX_OBJECTS)
    k = int(rng.integers(len(base.objects)))
    # attributes take turns, so each kind of difference is equally common in a benchmark
    diff = TwinDiff(k, TWIN_ATTRIBUTES[(p + seed) % len(TWIN_ATTRIBUTES)])
    twin = mutate(rng, base, diff, pools, [base.objects[k].attribute(diff.attribute)])
    return PlannedScene(base, [2 * p + 1], diff, late), PlannedScene(twin, [2 * p], diff, late)


def _test_scenes(n: int, split: str, seed: int, pools: ClassPools) -> list[PlannedScene]:
    """The scenes of a split of twin pairs (``val``, ``test``), each split from its own random streams."""
    scenes = [scene for p in range(n // 2) for scene in _twin_pair(seed, split, p, pools)]
    if n % 2:
        first, second = scenes[0], scenes[1]
        assert first.diff is not None
        k, attribute = first.diff.object, first.diff.attribute
        taken = [s.graph.objects[k].attribute(attribute) for s in (first, second)]
        third = mutate(split_rng(seed, split, SCENE, EXTRA_UNIT), first.graph, first.diff, pools, taken)
        scenes.append(PlannedScene(third, [0, 1], first.diff, True))
        first.twins.append(n - 1)
        second.twins.append(n - 1)
    return scenes


def _plan(n: int, split: str, seed: int, pools: ClassPools) -> list[PlannedScene]:
    if split in TWIN_SPLITS:
        return _test_scenes(n, split, seed, pools)
    return [PlannedScene(draw_scene(split_rng(seed, split, SCENE, i), pools, 1, MAX_OBJECTS)) for i in range(n)]


def _distractors(scene: PlannedScene, scenes: list[PlannedScene]) -> list[list[SceneObject]]:
    """Per object, what its referring expression must not fit: the other objects, and for a val or test scene
    the twins' versions of the mutated object, so the words that pick out an unchanged object are
    the same in every twin's caption."""
    graph = scene.graph
    distractors = [graph.others(m) for m in range(len(graph.objects))]
    if scene.diff is None:
        return distractors
    k = scene.diff.object
    variants = [scenes[t].graph.objects[k] for t in scene.twins]
    return [d + variants if m != k else d for m, d in enumerate(distractors)]


@dataclass(frozen=True)
class _Corpus:
    """What every scene of one generate_scenes call shares."""

    out: Path
    split: str
    seed: int
    width: int  # digits of a scene number
    photos: np.ndarray
    count_tokens: TokenCounter

    def scene_id(self, i: int) -> str:
        return f"scene-{self.split}-{i:0{self.width}d}"


def _meta(corpus: _Corpus, scene: PlannedScene, cap: LongCaption) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "split": corpus.split,
        **scene.graph.to_json(),
        "relations": [asdict(r) for r in cap.relations],
        "long_tokens": cap.tokens,
    }
    if scene.diff is not None:
        meta["twin_of"] = [corpus.scene_id(t) for t in scene.twins]
        meta["twin_diff"] = asdict(scene.diff)
        meta["twin_mention_token"] = cap.mention
        meta["twin_late"] = cap.mention is not None and cap.mention >= LATE_TOKEN
    return meta


def _write_scene(corpus: _Corpus, scenes: list[PlannedScene], i: int) -> Item:
    """Caption scene ``i`` and write its picture."""
    scene = scenes[i]
    k = scene.diff.object if scene.diff else None
    rng = split_rng(corpus.seed, corpus.split, CAPTION, i)
    cap = long_caption(
        scene.graph, rng, corpus.count_tokens, _distractors(scene, scenes), k if scene.late else None, k
    )
    image = f"images/{i:0{corpus.width}d}.png"
    Image.fromarray(render_scene(scene.graph, corpus.photos)).save(corpus.out / image, format="PNG")
    captions = {"long": cap.text, "short": short_caption(scene.graph)}
    return Item(id=corpus.scene_id(i), image=image, captions=captions, meta=_meta(corpus, scene, cap))


def prepare_out(out: Path) -> None:
    """An empty ``out/images``; a previous corpus in ``out`` is removed, anything else refused."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder: choose another output folder")
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


def _check_arguments(n: int, split: str, seed: int) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DatasetError(f"the number of scenes must be a positive integer, got {n!r}")
    if split in TWIN_SPLITS and n < 2:
        raise DatasetError(f"the {split} split needs 2 scenes or more: every {split} scene has a near twin")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"the seed must be a non-negative integer, got {seed!r}")


def add_other_words(items: list[Item], split: str, seed: int, variants: int) -> None:
    """Give each item ``variants`` more captions, ``long_w1`` ...: its long caption with each class, size,
    orientation and texture word swapped for a WordNet synonym with probability ``OTHER_WORDS_P``
    (``captions.lexical``), drawn from the item's own OTHER_WORDS stream."""
    for i, item in enumerate(items):
        rng = split_rng(seed, split, OTHER_WORDS, i)
        for k in range(1, variants + 1):
            item.captions[f"long_w{k}"] = relexicalise(item.captions["long"], rng, OTHER_WORDS_P)


def add_alt_captions(items: list[Item], split: str, seed: int, variants: int) -> None:
    """Give each item with a scene graph ``variants`` more captions, ``long_a1`` ...: long captions of its graph in
    the alt grammar (``captions.alt``), drawn from the item's own ALT stream."""
    for i, item in enumerate(items):
        if "objects" not in item.meta or "background" not in item.meta:
            continue
        graph = SceneGraph.from_json(item.meta)
        rng = split_rng(seed, split, ALT, i)
        for k in range(1, variants + 1):
            item.captions[f"long_a{k}"] = alt_caption(graph, rng)


def put_alt_in_place(
    items: list[Item], split: str, seed: int, share: float, count_tokens: TokenCounter
) -> None:
    """Replace the long caption of a share ``share`` of the items with a scene graph by its caption in the alt
    grammar (the one ``add_alt_captions`` would add as ``long_a1``), each item deciding from its own ALT_IN_PLACE
    stream. A replaced item's meta gets ``long_style: "alt"`` and the new ``long_tokens``; its ``relations`` stay
    those of the own caption it replaces. Training then reads both grammars at the cost of one long caption per
    scene."""
    if not share:
        return
    for i, item in enumerate(items):
        if "objects" not in item.meta or "background" not in item.meta:
            continue
        if split_rng(seed, split, ALT_IN_PLACE, i).random() >= share:
            continue
        text = alt_caption(SceneGraph.from_json(item.meta), split_rng(seed, split, ALT, i))
        item.captions["long"] = text
        item.meta["long_style"] = "alt"
        item.meta["long_tokens"] = count_tokens(text)


def _count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class SceneCaptions:
    """How a corpus is captioned: the grammar (``style``), and how many training captions each scene gets
    besides: in other words (``other_words``, see ``add_other_words``) and in the alt grammar (``alt``, see
    ``add_alt_captions``); and the share of scenes whose long caption is the alt grammar's instead
    (``alt_in_place``, see ``put_alt_in_place``; training splits only)."""

    style: str = "own"
    other_words: int = 0
    alt: int = 0
    alt_in_place: float = 0.0

    def __post_init__(self) -> None:
        if self.style not in CAPTION_STYLES:
            raise DatasetError(f"unknown caption style {self.style!r}: expected one of {', '.join(CAPTION_STYLES)}")
        _count("other_words", self.other_words)
        _count("alt", self.alt)
        if self.other_words and self.style != "own":
            raise DatasetError("captions in other words are made from the own style's long captions: use them "
                               "with the own style")
        if self.alt and self.style != "own":
            raise DatasetError("alt captions are training captions: use them with the own style")
        share = self.alt_in_place
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise DatasetError(f"alt_in_place is a share of the scenes, from 0 to 1, got {share!r}")
        if share and self.style != "own":
            raise DatasetError("alt captions in place are training captions: use them with the own style")
        if share and self.alt:
            raise DatasetError("alt captions in place are the ones --alt-captions adds as long_a1: use one or the "
                               "other")


def generate_scenes(
    out: Path | str, n: int, split: str, seed: int, progress: bool = True,
    captions: SceneCaptions | str = "own",
) -> Dataset:
    """Write ``n`` scenes of ``split`` (DATASET.md) to ``out``; same arguments, same bytes.

    ``captions="unseen"`` (or ``SceneCaptions("unseen")``): the same scenes and image bytes, captioned by the
    evaluation-only grammar (``captions.unseen``); items are what ``restyle_items`` makes of the own style's, with
    the same seed. ``SceneCaptions(other_words=k)``: k more captions per scene in other words, for training;
    ``SceneCaptions(alt=k)``: k more in the alt grammar, for training; ``SceneCaptions(alt_in_place=p)``: the
    long caption of a share p of the train scenes in the alt grammar instead; every other caption and image
    stays byte for byte what it is without them."""
    _check_arguments(n, split, seed)
    opts = captions if isinstance(captions, SceneCaptions) else SceneCaptions(captions)
    if opts.alt_in_place and split in TWIN_SPLITS:
        raise DatasetError(f"alt captions in place change the long captions that {split} scores: use them with "
                           "the train split")
    out = Path(out)
    prepare_out(out)
    photos, _ = load_fashion_mnist(fashion_mnist_part(split))
    corpus = _Corpus(out, split, seed, max(6, len(str(n - 1))), photos, default_token_counter())
    scenes = _plan(n, split, seed, class_pools(split))
    steps = tqdm(range(n), desc=f"scenes ({split})", unit="scene", disable=not progress)
    items = [_write_scene(corpus, scenes, i) for i in steps]
    if opts.style == UNSEEN_STYLE:
        items = restyle_items(items, seed, corpus.count_tokens, progress)
    add_other_words(items, split, seed, opts.other_words)
    add_alt_captions(items, split, seed, opts.alt)
    put_alt_in_place(items, split, seed, opts.alt_in_place, corpus.count_tokens)
    # written last: a folder without items.jsonl is an unfinished run
    write_items(out, items)
    return Dataset(root=out, items=items)
