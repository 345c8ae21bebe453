"""Short captions: the count and the categories, in at most 15 words."""

from __future__ import annotations

from collections import Counter

from llm2clip.data.captions.wording import NUMBERS, join, noun, with_article
from llm2clip.data.scene_graph import CLASSES, SceneGraph

MAX_WORDS = 15


def short_caption(graph: SceneGraph) -> str:
    """Count and categories in at most 15 words ("three items: two sneakers and a bag, on a ...")."""
    counts = Counter(o.category for o in graph.objects)
    classes = sorted(counts, key=lambda c: (-counts[c], CLASSES.index(c)))
    with_articles = [
        with_article(noun(c)) if counts[c] == 1 else f"{NUMBERS[counts[c]]} {noun(c, True)}" for c in classes
    ]
    # where words are scarce: no article before a single item, "trousers" for one pair
    bare = [
        ("trousers" if c == "trouser" else noun(c)) if counts[c] == 1 else f"{NUMBERS[counts[c]]} {noun(c, True)}"
        for c in classes
    ]
    n = len(graph.objects)
    head = f"{NUMBERS[n]} item{'' if n == 1 else 's'}:"
    on = f"on a {graph.background.texture} {graph.background.colour} background"
    candidates = [f"{head} {join(with_articles)}, {on}", f"{head} {join(bare)}, {on}", f"{head} {join(with_articles)}"]
    for text in candidates:
        if len(text.split()) <= MAX_WORDS:
            return text
    return f"{head} {join(bare)}"
