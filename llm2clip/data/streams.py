"""The random streams of the scene corpus: every draw comes from one of these, so that the same
arguments give the same bytes and the first scenes of a split do not depend on ``n``.

A corpus draws scene ``i`` of a split from ``(seed, split, SCENE, i)`` (a test twin pair ``p``
from ``(seed, "test", SCENE, p)``) and its long caption from ``(seed, split, CAPTION, i)``.
Paraphrases and stage 1's near twins, which start from a single seed, use streams of their own; the
unseen caption style (an evaluation-only grammar) draws a scene and its twins from
``(seed, split, UNSEEN, first index)``, so restyling never moves a draw of the own style. Captions in other
words (``other_words``) draw from ``(seed, split, OTHER_WORDS, i)``, and captions in the alt grammar
(``alt``) from ``(seed, split, ALT, i)``, each apart from everything else; whether a scene's long caption is
put in the alt grammar in place (``alt_in_place``) comes from ``(seed, split, ALT_IN_PLACE, i)``, and its words
from the ALT stream, so that it is the caption ``alt`` would add as ``long_a1``.
"""

from __future__ import annotations

import numpy as np

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
SCENE, CAPTION = 0, 1  # per split
PARAPHRASE = 3  # paraphrase_long: apart from the scene and caption streams
NEAR_TWIN = 4  # near_twin_graph: stage 1's hard-negative twins
UNSEEN = 5  # per split: the unseen-style captions of a group of twins, from its first scene's index
OTHER_WORDS = 6  # per split and scene: the long caption's attribute words swapped for WordNet synonyms
ALT = 7  # per split and scene: long captions in the alt grammar, for training
ALT_IN_PLACE = 8  # per split and scene: whether its long caption is the alt grammar's (``alt_in_place``)
EXTRA_UNIT = 2**31 - 1  # unit of the third member of test pair 0 (odd n)


def split_rng(seed: int, split: str, stream: int, unit: int) -> np.random.Generator:
    """The generator of one scene (or twin pair) ``unit`` of ``split``, for ``stream``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split], stream, unit)))


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))
