"""The unseen caption style: same scenes and pictures, every fact stated, none of the own grammar's sentences."""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from unseen_checker import class_words, has_any, missing_facts, sentences

from llm2clip.data import Dataset, SceneGraph, generate_scenes, long_caption, short_caption
from llm2clip.data.captions import segments as own_segments
from llm2clip.data.captions import short as own_short
from llm2clip.data.captions import templates as own_templates
from llm2clip.data.captions.unseen import draw_plan, restyle_items, unseen_captions
from llm2clip.data.captions.unseen.sentences import referring
from llm2clip.data.scene_graph import MAX_OBJECTS, SceneObject, draw_scene
from llm2clip.defaults import default_tokenizer
from llm2clip.errors import DatasetError

KEYS = [(9, "test", 3), (12, "train", 0)]
CAPTION_META = {"relations", "long_tokens", "twin_mention_token", "twin_late", "caption_style"}
POOLS = [np.arange(3) for _ in range(10)]  # text-only graphs: any photo index will do


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[tuple[int, str, int, str], Dataset]:
    root = tmp_path_factory.mktemp("styles")
    return {
        (*key, style): generate_scenes(root / f"{key[1]}-{style}", *key, progress=False, captions=style)
        for key in KEYS
        for style in ("own", "unseen")
    }


@pytest.fixture(scope="module")
def graphs() -> list[SceneGraph]:
    """Random graphs of every size, text only."""
    rng = np.random.default_rng(11)
    return [draw_scene(rng, POOLS, 1 + i % MAX_OBJECTS, 1 + i % MAX_OBJECTS) for i in range(120)]


@pytest.mark.parametrize("key", KEYS)
def test_same_scenes_and_image_bytes_in_both_styles(corpora, key):
    own, unseen = corpora[(*key, "own")], corpora[(*key, "unseen")]
    assert [it.id for it in own] == [it.id for it in unseen]
    for a, b in zip(own, unseen, strict=True):
        assert a.image == b.image
        assert own.image_path(a).read_bytes() == unseen.image_path(b).read_bytes()
        assert {k: v for k, v in a.meta.items() if k not in CAPTION_META} == {
            k: v for k, v in b.meta.items() if k not in CAPTION_META
        }
        assert a.long != b.long and a.short != b.short
        assert "caption_style" not in a.meta and b.meta["caption_style"] == "unseen"


@pytest.mark.parametrize("key", KEYS)
def test_every_fact_of_the_graph_is_in_each_unseen_caption(corpora, key):
    for it in corpora[(*key, "unseen")]:
        graph = SceneGraph.from_json(it.meta)
        assert missing_facts(it.long, graph, it.meta["relations"]) == [], it.long
        if len(graph.objects) > 1:
            assert it.meta["relations"], "a scene of two or more objects states a relation"


def test_every_fact_is_stated_for_random_graphs(graphs):
    for i, graph in enumerate(graphs):
        (cap,) = unseen_captions([graph], np.random.default_rng(i), words)
        relations = [{"subject": r.subject, "object": r.object} for r in cap.long.relations]
        assert missing_facts(cap.long.text, graph, relations) == [], cap.long.text


def test_the_fact_checker_can_fail(corpora):
    """A twin's caption misses the other twin's mutated fact; an own-style caption misses the unseen words."""
    unseen = corpora[(9, "test", 3, "unseen")]
    by_id = {it.id: it for it in unseen}
    for it in unseen:
        for twin in it.meta["twin_of"]:
            assert missing_facts(it.long, SceneGraph.from_json(by_id[twin].meta)) != []
    for it in corpora[(9, "test", 3, "own")]:
        assert missing_facts(it.long, SceneGraph.from_json(it.meta)) != []


def own_fixed_runs() -> list[list[str]]:
    """Every run of fixed words in the own grammar's strings (templates.py, segments.py, short.py): the text
    between placeholders, and between the parts of an f-string."""
    runs = []
    for module in (own_templates, own_segments, own_short):
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for part in re.split(r"\{[^}]*\}", node.value):
                    runs.append(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", part.lower()))
    return runs


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def caption_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower())


def test_no_four_fixed_words_of_the_own_grammar_in_unseen_captions(corpora, graphs):
    # four words in a row, stricter than a whole sentence: "sits on the" may recur, "is placed in the" may not
    own = set().union(*(ngrams(run, 4) for run in own_fixed_runs()))
    assert len(own) > 50  # the own grammar's sentences are there to be found
    unseen = [t for it in corpora[(9, "test", 3, "unseen")] for t in (it.long, it.short)]
    for i, g in enumerate(graphs):
        (cap,) = unseen_captions([g], np.random.default_rng(i), words)
        unseen += [cap.long.text, cap.short]
    for text in unseen:
        assert not ngrams(caption_words(text), 4) & own, text
    # the check can fail: the own grammar's captions of the same graphs hit it
    hits = [bool(ngrams(caption_words(long_caption(g, np.random.default_rng(i), words).text), 4) & own)
            for i, g in enumerate(graphs)]
    assert np.mean(hits) > 0.8


def test_unseen_captions_avoid_the_own_words_for_attributes(graphs):
    own_words = ["t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot", "small", "medium", "medium-sized", "large", "upright", "upside down", "upside-down",
                 "mirrored", "striped", "dotted", "checkered", "plain", "item", "items", "cell", "cells"]
    for i, g in enumerate(graphs):
        (cap,) = unseen_captions([g], np.random.default_rng(i), words)
        for text in (cap.long.text, cap.short):
            found = [w for w in own_words if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text, re.IGNORECASE)]
            assert found == [], text


def test_phrasing_and_order_vary(graphs):
    firsts = Counter()
    for i, g in enumerate(graphs):
        (cap,) = unseen_captions([g], np.random.default_rng(i), words)
        firsts[sentences(cap.long.text)[0].split()[0]] += 1
    assert len(firsts) >= 6
    plans = [draw_plan(4, np.random.default_rng(i)) for i in range(60)]
    assert {p.layout for p in plans} == {"count-first", "background-first", "relations-first"}
    assert {p.order for p in plans} == {"reading", "colour", "class", "shuffled"}


def test_referring_expressions_stay_unique():
    tee = SceneObject("t-shirt", "red", "small", "upright", "top", "left")
    plan = draw_plan(1, np.random.default_rng(0))
    ch = plan.objects[0]
    same_look = tee.at_cell(4)
    assert "upper-left corner" in referring(tee, [same_look], ch) or "row one" in referring(tee, [same_look], ch) \
        or "top left-hand corner" in referring(tee, [same_look], ch)
    flipped = SceneObject("t-shirt", "red", "small", "upside down", "top", "center")
    assert "unflipped" in referring(tee, [flipped], ch)
    bigger_flipped = SceneObject("t-shirt", "red", "large", "upright", "top", "center")
    ref = referring(tee, [bigger_flipped], ch)
    assert "unflipped" in ref and any(w in ref for w in ("tiny", "little", "compact"))


def mentions(sentence: str, obj: SceneObject) -> bool:
    return has_any(sentence, [obj.colour, f"{obj.colour}-coloured"]) and has_any(sentence, class_words(obj.category))


def test_twins_differ_only_where_their_facts_do(corpora):
    unseen = corpora[(9, "test", 3, "unseen")]
    by_id = {it.id: it for it in unseen}
    for a in unseen:
        k = a.meta["twin_diff"]["object"]
        for b in (by_id[t] for t in a.meta["twin_of"]):
            ga = SceneGraph.from_json(a.meta)
            sa, sb = Counter(sentences(a.long)), Counter(sentences(b.long))
            assert sum(sa.values()) == sum(sb.values())
            only_a = list((sa - sb).elements())
            assert only_a, "twins' captions differ"
            for s in only_a:
                # a sentence of a's that b lacks names a's version of the object, or lists the free cells
                assert mentions(s, ga.objects[k]) or s.startswith(("Nothing occupies", "Left vacant")), s
            if a.meta["twin_diff"]["attribute"] != "cell":
                assert not any(s.startswith(("Nothing occupies", "Left vacant")) for s in only_a)
            if a.meta["twin_diff"]["attribute"] in ("colour", "size", "orientation"):
                assert a.short == b.short


def test_late_groups_stay_late_and_meta_is_measured(corpora):
    tok = default_tokenizer()
    own = corpora[(9, "test", 3, "own")]
    for a, b in zip(own, corpora[(9, "test", 3, "unseen")], strict=True):
        assert b.meta["long_tokens"] == len(tok.encode(b.long, add_special_tokens=False))
        assert 60 <= b.meta["long_tokens"] <= 250
        assert b.meta["twin_late"] == (b.meta["twin_mention_token"] >= 77)
        if a.meta["twin_late"]:
            assert b.meta["twin_late"]


def test_same_arguments_same_bytes_and_seeds_change_phrasing(corpora, tmp_path):
    first = corpora[(9, "test", 3, "unseen")]
    again = generate_scenes(tmp_path / "again", 9, "test", 3, progress=False, captions="unseen")
    assert (again.root / "items.jsonl").read_bytes() == (first.root / "items.jsonl").read_bytes()
    other = restyle_items(corpora[(9, "test", 3, "own")].items, seed=4, progress=False)
    assert [it.meta["objects"] for it in other] == [it.meta["objects"] for it in first]
    assert sum(a.long != b.long for a, b in zip(other, first, strict=True)) >= 8


def test_unknown_style_and_foreign_items_are_refused(tmp_path, corpora):
    with pytest.raises(DatasetError, match="unknown caption style"):
        generate_scenes(tmp_path / "x", 2, "test", 0, progress=False, captions="fancy")
    item = corpora[(12, "train", 0, "own")].items[0]
    bare = type(item)(id="x", image=item.image, captions=item.captions, meta={})
    with pytest.raises(DatasetError, match="no scene graph"):
        restyle_items([bare], 0, words, progress=False)


def test_short_captions_name_kinds_and_background(graphs):
    for i, g in enumerate(graphs):
        (cap,) = unseen_captions([g], np.random.default_rng(i), words)
        assert len(cap.short.split()) <= 15
        for c in {o.category for o in g.objects}:
            assert any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", cap.short) for w in class_words(c)), cap.short
    assert short_caption(graphs[0]) != unseen_captions([graphs[0]], np.random.default_rng(0), words)[0].short
    assert json.dumps(graphs[0].to_json())  # graphs are text only: no photo was needed


def test_a_twin_without_its_partners_is_still_measured(corpora):
    own = corpora[(9, "test", 3, "own")].items
    (alone,) = restyle_items(own[3:4], 3, progress=False)
    tok = default_tokenizer()
    k = alone.meta["twin_diff"]["object"]
    first = next(s for s in sentences(alone.long) if mentions(s, SceneGraph.from_json(alone.meta).objects[k]))
    before = alone.long[: alone.long.index(first)].strip()
    assert alone.meta["twin_mention_token"] == len(tok.encode(before, add_special_tokens=False))
    assert alone.meta["twin_late"] == (alone.meta["twin_mention_token"] >= 77)
