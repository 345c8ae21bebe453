"""Datasets: the items.jsonl folder of DESIGN.md, and the scene corpus of DATASET.md.

The scene corpus, by concern: ``fashion_mnist`` (the photos), ``scene_graph`` (what a scene holds
and how it is drawn), ``render`` (its picture), ``captions`` (long and short), ``twins`` (one fact
changed), ``paraphrase`` (another long caption) and ``generator`` (the folder, split by split);
``streams`` names every random stream they draw from. ``captions.unseen`` is a second caption grammar,
for evaluation only (``generate_scenes(..., captions="unseen")``, ``restyle`` for a corpus folder).
"""

from llm2clip.data.captions import LongCaption, long_caption, short_caption
from llm2clip.data.captions.unseen import restyle_items, unseen_captions
from llm2clip.data.dataset import Dataset, Item, read_dataset, write_items
from llm2clip.data.generator import CAPTION_STYLES, SPLITS, generate_scenes
from llm2clip.data.paraphrase import paraphrase_long
from llm2clip.data.render import CANVAS, render_scene
from llm2clip.data.restyle import restyle_corpus
from llm2clip.data.scene_graph import (
    CLASSES,
    COLOURS,
    COLS,
    ORIENTATIONS,
    PALETTE,
    ROWS,
    SIZES,
    TEXTURES,
    Background,
    SceneGraph,
    SceneObject,
    relation,
)
from llm2clip.data.twins import near_twin_graph

__all__ = [
    "CANVAS",
    "CAPTION_STYLES",
    "CLASSES",
    "COLOURS",
    "COLS",
    "ORIENTATIONS",
    "PALETTE",
    "ROWS",
    "SIZES",
    "SPLITS",
    "TEXTURES",
    "Background",
    "Dataset",
    "Item",
    "LongCaption",
    "SceneGraph",
    "SceneObject",
    "generate_scenes",
    "long_caption",
    "near_twin_graph",
    "paraphrase_long",
    "read_dataset",
    "relation",
    "render_scene",
    "restyle_corpus",
    "restyle_items",
    "short_caption",
    "unseen_captions",
    "write_items",
]
