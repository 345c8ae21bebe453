"""Stage 1's views: the caption texts of each scene, and which of them make up micro-batch m.

- Each scene offers its captions (long, short, any other) plus K paraphrases of its long caption,
  re-phrased once up front by the scene generator from ``item.meta`` (``paraphrase_long``); a micro-batch
  draws 2 distinct views per scene. Items without a scene graph use their own captions only; an item with
  fewer than 2 distinct texts has no positive pair and is left out. ``positives="long"`` keeps the short
  caption out of the views: with long/short pairs the loss asks the long caption's embedding to match a
  caption that names only the count and the classes, which rewards dropping every other fact (see
  docs/results/repro/pre-protocol/FINDINGS.md).
- Hard negatives (``hard_negatives``): half of a micro-batch are generator near twins of the other half's
  scenes, one attribute of one object changed (``near_twin_graph``), two paraphrases each. Random scenes
  differ in many facts at once; a twin differs in one, so only an embedding that keeps it separates them.
- Views in other words (``other_words``: WordNet synonyms) and in the alt grammar (``alt_views``: other
  sentence orders and constructions) are more views of the scene and of its twin: the paper's diverse captions.
- Data order and view choice are functions of (seed, step): a resumed run draws what the uninterrupted
  one would have.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llm2clip.data import Dataset
from llm2clip.errors import DatasetError
from training.stage1.config import POSITIVES, Stage1Cfg

# the streams of the alt views: (seed, ALT_KEY, i, k) for scene i, (seed, ALT_KEY + 1, i, k) for its twin
# (other_words draws from (seed, 0, i, k) and (seed, 1, i, k))
ALT_KEY = 2


def _has_graph(meta: dict) -> bool:
    return "objects" in meta and "background" in meta


def caption_pools(dataset: Dataset, paraphrases: int, seed: int, progress: bool = True,
                  positives: str = "all", words: int = 0) -> list[list[str]]:
    """Distinct caption texts of every item: its own captions (all, or only the long one), then
    ``paraphrases`` re-phrasings of the long one, then ``words`` of these long-style texts in other words
    (``other_words``)."""
    from llm2clip.data import paraphrase_long

    if positives not in POSITIVES:
        raise DatasetError(f"unknown positives {positives!r}: choose among {', '.join(POSITIVES)}")
    pools = []
    for i, item in enumerate(tqdm(dataset.items, desc="paraphrase captions", unit="item",
                                  disable=not progress or paraphrases == 0)):
        own = item.captions.values() if positives == "all" else [item.captions.get("long", "")]
        texts = list(dict.fromkeys(t for t in own if t.strip()))
        if paraphrases and _has_graph(item.meta):
            for k in range(paraphrases):
                para_seed = int(np.random.SeedSequence([seed, i, k]).generate_state(1)[0])
                text = paraphrase_long(item.meta, para_seed, avoid=texts)
                if text not in texts:
                    texts.append(text)
        longs = [t for t in texts if t == item.captions.get("long") or t not in item.captions.values()]
        texts += other_words(longs, words, [seed, 0, i], texts)
        pools.append(texts)
    return pools


def other_words(longs: list[str], variants: int, key: list[int], avoid: list[str]) -> list[str]:
    """``variants`` more views: the k-th of ``longs`` (long-style texts: a long caption, its paraphrases; cycling)
    with its class, size, orientation and texture words swapped for WordNet synonyms with probability 1/2
    (``relexicalise``), drawn from (*key, k). A draw that swaps nothing, or repeats a text, adds nothing."""
    from llm2clip.data.captions.lexical import relexicalise
    from llm2clip.data.generator import OTHER_WORDS_P

    out: list[str] = []
    for k in range(variants if longs else 0):
        text = relexicalise(longs[k % len(longs)], np.random.default_rng([*key, k]), OTHER_WORDS_P)
        if text not in avoid and text not in out:
            out.append(text)
    return out


def _twin_state(seed: int, i: int) -> np.ndarray:
    """Item i's twin draws: [0] the twin graph, [1] and [2] its two captions."""
    return np.random.SeedSequence([seed, i, 2**20]).generate_state(3)


def twin_graphs(dataset: Dataset, seed: int) -> list[dict | None]:
    """The near twin of every item (one attribute of one object changed), as a scene-graph meta; None for an
    item without a scene graph."""
    from llm2clip.data import near_twin_graph

    return [near_twin_graph(item.meta, int(_twin_state(seed, i)[0]))
            if _has_graph(item.meta) else None for i, item in enumerate(dataset.items)]


def twin_pools(dataset: Dataset, seed: int, progress: bool = True, words: int = 0) -> list[list[str]]:
    """Two generator captions of a near twin of every item (``twin_graphs``), then ``words`` of them in other
    words (``other_words``); [] for an item without a scene graph."""
    from llm2clip.data import paraphrase_long

    pools = []
    twins = twin_graphs(dataset, seed)
    for i, twin in enumerate(tqdm(twins, desc="near-twin captions", unit="item", disable=not progress)):
        if twin is None:
            pools.append([])
            continue
        state = _twin_state(seed, i)
        first = paraphrase_long(twin, int(state[1]))
        pair = [first, paraphrase_long(twin, int(state[2]), avoid=[first])]
        pools.append(pair + other_words(pair, words, [seed, 1, i], pair))
    return pools


def with_alt(pools: list[list[str]], metas: list[dict | None], variants: int, key: list[int]) -> list[list[str]]:
    """``pools`` with ``variants`` more views of each scene graph in ``metas``: its long caption in the alt grammar
    (``llm2clip.data.captions.alt``: the same facts in other sentence orders, constructions and synonyms), the
    k-th of item i drawn from (*key, i, k). A text already in the pool adds nothing; no graph, no view."""
    from llm2clip.data.captions.alt import alt_caption
    from llm2clip.data.scene_graph import SceneGraph

    out = []
    for i, (pool, meta) in enumerate(zip(pools, metas, strict=True)):
        texts = list(pool)
        if variants and meta is not None and _has_graph(meta):
            graph = SceneGraph.from_json(meta)
            for k in range(variants):
                text = alt_caption(graph, np.random.default_rng([*key, i, k]))
                if text not in texts:
                    texts.append(text)
        out.append(texts)
    return out


@dataclass
class Views:
    """The caption pools of a run: per item its views and (with hard negatives) its twin's."""

    pools: list[list[str]]
    twins: list[list[str]] | None

    def sampler(self, batch_size: int, seed: int, stream: int) -> ViewSampler:
        return ViewSampler(self.pools, batch_size, seed, stream, self.twins)


def load_views(folder: Path, dataset: Dataset, cfg: Stage1Cfg, progress: bool) -> Views:
    """The run's pools, built once and kept in ``folder`` (captions.json, twins.json): a resumed run reads
    the texts it started with."""

    def cached(name: str, build: Callable[[], list[list[str]]]) -> list[list[str]]:
        path = folder / name
        if path.is_file():
            return json.loads(path.read_text())
        pools = build()
        path.write_text(json.dumps(pools))
        return pools

    metas: list[dict | None] = [item.meta for item in dataset.items]
    pools = cached("captions.json", lambda: with_alt(
        caption_pools(dataset, cfg.paraphrases, cfg.seed, progress, cfg.positives, cfg.other_words),
        metas, cfg.alt_views, [cfg.seed, ALT_KEY]))
    twins = cached("twins.json", lambda: with_alt(
        twin_pools(dataset, cfg.seed, progress, cfg.other_words),
        twin_graphs(dataset, cfg.seed), cfg.alt_views, [cfg.seed, ALT_KEY + 1])) if cfg.hard_negatives else None
    return Views(pools, twins)


class ViewSampler:
    """Micro-batch m: which scenes (an epoch-wise permutation) and which 2 views of each; a function of m.

    With ``twins`` (one pool per item, aligned with ``pools``), a micro-batch holds batch_size // 2 scenes
    and, as further labels, their near twins: 2 views of each twin, negatives to everything else.
    """

    def __init__(self, pools: list[list[str]], batch_size: int, seed: int, stream: int,
                 twins: list[list[str]] | None = None) -> None:
        keep = [i for i, p in enumerate(pools) if len(p) >= 2 and (twins is None or len(twins[i]) >= 2)]
        self.pools = [pools[i] for i in keep]
        self.twins = None if twins is None else [twins[i] for i in keep]
        self.scenes = batch_size if twins is None else batch_size // 2
        if twins is not None and (batch_size < 2 or batch_size % 2):
            raise DatasetError(f"hard negatives need an even batch size (got {batch_size}): half of it "
                               "are the twins of the other half")
        if len(self.pools) < max(2, self.scenes):
            raise DatasetError(f"{len(self.pools)} items have two distinct captions, fewer than the batch size "
                               f"{batch_size}: use a larger dataset or a smaller batch")
        self.seed, self.stream = seed, stream
        self.per_epoch = len(self.pools) // self.scenes

    def __call__(self, m: int) -> tuple[list[str], torch.Tensor]:
        epoch, k = divmod(m, self.per_epoch)
        perm = np.random.default_rng([self.seed, self.stream, epoch]).permutation(len(self.pools))
        rng = np.random.default_rng([self.seed, self.stream, epoch, k, 1])
        texts, labels = [], []
        for j, p in enumerate(perm[k * self.scenes : (k + 1) * self.scenes]):
            groups = [self.pools[int(p)]] if self.twins is None else [self.pools[int(p)], self.twins[int(p)]]
            for g, pool in enumerate(groups):
                for v in rng.choice(len(pool), size=2, replace=False):
                    texts.append(pool[int(v)])
                    labels.append(len(groups) * j + g)
        return texts, torch.tensor(labels)
