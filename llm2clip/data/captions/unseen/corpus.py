"""A scene corpus's items with their captions rewritten in the unseen style, from the scene graphs in their meta.

Images, ids, scene graphs and twin links stay; ``captions`` become ``{"long", "short"}`` in the unseen
style, and the caption-derived meta (``relations``, ``long_tokens``, ``twin_mention_token``,
``twin_late``) is measured again on the new captions; ``caption_style: "unseen"`` is added.

Twins (``twin_of`` links) are phrased together, from one plan drawn from ``(seed, split, UNSEEN, i)``
with ``i`` the index of the group's first scene, with referring expressions unique against the twins'
versions of the mutated object as the own generator makes them. A group whose own captions name the
mutated object after ``LATE_TOKEN`` tokens (``twin_late`` of any member) is phrased late again, so the
early/late split of the near-twin benchmark keeps the same scenes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from tqdm import tqdm

from llm2clip.data.captions.long import LATE_TOKEN, TokenCounter, default_token_counter
from llm2clip.data.captions.unseen.compose import UnseenCaptions, unseen_captions
from llm2clip.data.dataset import Item
from llm2clip.data.scene_graph import SceneGraph, SceneObject
from llm2clip.data.streams import SPLIT_CODES, UNSEEN, split_rng
from llm2clip.errors import DatasetError

STYLE = "unseen"


def _graph(item: Item) -> SceneGraph:
    meta = item.meta
    if not isinstance(meta, Mapping) or "background" not in meta or "objects" not in meta:
        raise DatasetError(
            f"item {item.id!r} has no scene graph in its meta: only a scene corpus (`llm2clip data scenes`) can be "
            "restyled"
        )
    try:
        return SceneGraph.from_json(meta)
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"item {item.id!r}: its meta's scene graph is malformed ({exc!r})") from None


def twin_groups(items: Sequence[Item]) -> list[list[int]]:
    """Indices of items linked by ``twin_of`` (either way), each group sorted, groups by their first index."""
    index = {it.id: i for i, it in enumerate(items)}
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, it in enumerate(items):
        twins = it.meta.get("twin_of") or []
        for t in [twins] if isinstance(twins, str) else twins:
            if t in index:
                parent[root(index[t])] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


def _mutated(items: Sequence[Item], group: Sequence[int]) -> int | None:
    """The object the group's twins disagree on, from ``twin_diff``; None for a scene without one (a twin whose
    partners are not in ``items`` keeps its ``twin_diff``, so its mention is still measured)."""
    diffs = {(items[i].meta.get("twin_diff") or {}).get("object") for i in group}
    if diffs == {None}:
        return None
    if len(diffs) != 1 or not isinstance(k := diffs.pop(), int):
        names = ", ".join(items[i].id for i in group)
        raise DatasetError(f"twins {names} do not agree on twin_diff's object: their meta is inconsistent")
    return k


def _distractors(graphs: Sequence[SceneGraph], k: int | None) -> list[list[list[SceneObject]]]:
    """Per member, per object: the other objects, and for an object other than ``k`` the twins' versions of ``k``."""
    out = []
    for m, g in enumerate(graphs):
        variants = [h.objects[k] for j, h in enumerate(graphs) if j != m] if k is not None else []
        out.append([g.others(i) + (variants if i != k else []) for i in range(len(g.objects))])
    return out


def _restyled(item: Item, caps: UnseenCaptions, twinned: bool) -> Item:
    meta: dict[str, Any] = dict(item.meta)
    meta["caption_style"] = STYLE
    meta["relations"] = [asdict(r) for r in caps.long.relations]
    meta["long_tokens"] = caps.long.tokens
    if twinned:
        meta["twin_mention_token"] = caps.long.mention
        meta["twin_late"] = caps.long.mention is not None and caps.long.mention >= LATE_TOKEN
    return replace(item, captions={"long": caps.long.text, "short": caps.short}, meta=meta)


def _split(item: Item) -> str:
    split = item.meta.get("split")
    if split not in SPLIT_CODES:
        raise DatasetError(f"item {item.id!r}: meta names no split ({split!r}); expected one of {', '.join(SPLIT_CODES)}")
    return split


def restyle_items(
    items: Sequence[Item], seed: int, count_tokens: TokenCounter | None = None, progress: bool = True
) -> list[Item]:
    """``items`` (a scene corpus's, in file order) with unseen-style captions; same items and seed, same captions."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"the seed must be a non-negative integer, got {seed!r}")
    count = count_tokens or default_token_counter()
    graphs = [_graph(it) for it in items]
    out = list(items)
    for group in tqdm(twin_groups(items), desc="unseen captions", unit="group", disable=not progress):
        k = _mutated(items, group)
        members = [graphs[i] for i in group]
        late = k if k is not None and any(items[i].meta.get("twin_late") is True for i in group) else None
        rng = split_rng(seed, _split(items[group[0]]), UNSEEN, group[0])
        caps = unseen_captions(members, rng, count, _distractors(members, k), late, k)
        for i, c in zip(group, caps, strict=True):
            out[i] = _restyled(items[i], c, twinned=k is not None)
    return out
