"""Paraphrases: another long caption of an item's scene graph, drawn by the corpus's own caption machinery."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from llm2clip.data.captions import TokenCounter, default_token_counter, long_caption
from llm2clip.data.scene_graph import SceneGraph
from llm2clip.data.streams import PARAPHRASE, stream_rng

REDRAWS = 16  # draws that may still equal a text to avoid before one is returned anyway


@lru_cache(maxsize=1)
def _shared_token_counter() -> TokenCounter:
    # loading the tokenizer costs more than phrasing a caption; paraphrasing a corpus calls this per item
    return default_token_counter()


def paraphrase_long(
    meta: Mapping[str, Any],
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
    graph = SceneGraph.from_json(meta)
    rng = stream_rng(seed, PARAPHRASE)
    count = count_tokens or _shared_token_counter()
    text = long_caption(graph, rng, count).text
    for _ in range(REDRAWS):
        if text not in avoid:
            break
        text = long_caption(graph, rng, count).text
    return text
