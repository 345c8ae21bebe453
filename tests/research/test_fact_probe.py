"""Linear fact probes: hand-checked AUC, and probes that find exactly the facts an embedding holds."""

from __future__ import annotations

import numpy as np
import pytest

from llm2clip.data import CLASSES, COLOURS, COLS, ORIENTATIONS, ROWS, SIZES, TEXTURES
from research.fact_probe import bound_facts, fact_probe, roc_auc, scene_facts


def random_meta(rng: np.random.Generator) -> dict:
    bg = {"colour": str(rng.choice(COLOURS)), "texture": str(rng.choice(TEXTURES))}
    cells = rng.choice(9, size=int(rng.integers(1, 7)), replace=False)
    objects = [{"class": str(rng.choice(CLASSES)), "colour": str(rng.choice([c for c in COLOURS if c != bg["colour"]])),
                "size": str(rng.choice(list(SIZES))), "orientation": str(rng.choice(ORIENTATIONS)),
                "row": ROWS[c // 3], "col": COLS[c % 3]} for c in cells]
    return {"background": bg, "objects": objects}


def test_scene_facts():
    meta = {"background": {"colour": "blue", "texture": "dotted"},
            "objects": [{"class": "bag", "colour": "red", "size": "small", "orientation": "mirrored",
                         "row": "top", "col": "left"}]}
    facts = scene_facts(meta)
    true = {k for k, v in facts.items() if v}
    assert true == {"class:bag", "background:blue", "texture:dotted", "colour:red", "cell:top-left", "size:small",
                    "orientation:mirrored"}
    assert len(facts) == len(CLASSES) + 2 * len(COLOURS) + len(TEXTURES) + 9 + len(SIZES) + len(ORIENTATIONS)


def test_roc_auc_by_hand():
    y = np.array([False, True, False, True])
    assert roc_auc(np.array([0.1, 0.9, 0.2, 0.8]), y) == 1.0
    assert roc_auc(np.array([0.9, 0.1, 0.8, 0.2]), y) == 0.0
    assert roc_auc(np.zeros(4), y) == 0.5  # ties count half
    # one positive (0.5) below one negative (0.6): 3 of 4 pairs right
    assert roc_auc(np.array([0.1, 0.5, 0.6, 0.9]), y) == pytest.approx(0.75)


@pytest.fixture(scope="module")
def metas():
    rng = np.random.default_rng(0)
    return [random_meta(rng) for _ in range(800)]


def embed(metas, groups, rng, dim=96):
    """Each kept fact gets its own random direction; plus noise dimensions."""
    keys = [k for k in scene_facts(metas[0]) if k.split(":")[0] in groups]
    directions = rng.normal(size=(len(keys), dim))
    y = np.array([[scene_facts(m)[k] for k in keys] for m in metas], dtype=float)
    return y @ directions + 0.3 * rng.normal(size=(len(metas), dim))


def test_probe_finds_what_the_embedding_keeps(metas):
    rng = np.random.default_rng(1)
    full = fact_probe(embed(metas, {"class", "background", "texture", "colour", "cell", "size", "orientation"}, rng),
                      metas)
    assert full["named_in_short"] > 0.97 and full["long_only"] > 0.97
    assert full["train_scenes"] == 600 and full["test_scenes"] == 200 and full["facts"] == 53
    short_only = fact_probe(embed(metas, {"class", "background", "texture"}, rng), metas)
    assert short_only["named_in_short"] > 0.97
    assert abs(short_only["long_only"] - 0.5) < 0.08
    for g in ("colour", "cell", "size", "orientation"):
        assert abs(short_only["by_group"][g] - 0.5) < 0.12
    noise = fact_probe(rng.normal(size=(len(metas), 32)), metas)
    assert abs(noise["named_in_short"] - 0.5) < 0.08 and abs(noise["long_only"] - 0.5) < 0.08


def test_probe_rejects_mismatched_inputs(metas):
    with pytest.raises(ValueError, match="embeddings"):
        fact_probe(np.zeros((3, 4)), metas[:4])


def test_bound_facts_by_hand():
    meta = {"background": {"colour": "blue", "texture": "dotted"},
            "objects": [{"class": "bag", "colour": "red", "size": "small", "orientation": "mirrored",
                         "row": "top", "col": "left"},
                        {"class": "dress", "colour": "green", "size": "large", "orientation": "upright",
                         "row": "top", "col": "right"}]}
    b = bound_facts(meta)
    assert b["class:bag|size:small"] == (True, 1, 1)
    assert b["class:bag|size:large"] == (False, 1, 1)  # both present, not bound: the binding test's negative
    assert b["class:dress|cell:top-right"] == (True, 1, 1)
    assert b["class:dress|cell:top-left"] == (False, 1, 1)
    assert b["class:bag|colour:blue"] == (False, 1, 0)  # the background's colour is no object's


def counts_embedding(metas, bound, rng):
    """Bag of attribute words: a direction per class and per value, or per (class, value) binding."""
    keys, rows = {}, []
    for m in metas:
        row = {}
        for o in m["objects"]:
            for g in ("colour", "cell", "size", "orientation"):
                v = f"{o['row']}-{o['col']}" if g == "cell" else o[g]
                for k in ([(o["class"], g, v)] if bound else [("class", o["class"]), (g, v)]):
                    row[k] = row.get(k, 0) + 1
        rows.append(row)
        for k in row:
            keys.setdefault(k, len(keys))
    x = np.zeros((len(metas), len(keys)))
    for i, row in enumerate(rows):
        for k, n in row.items():
            x[i, keys[k]] = n
    return x + 0.05 * rng.normal(size=x.shape)


def test_bound_probe_needs_the_binding():
    rng = np.random.default_rng(2)
    metas = [random_meta(rng) for _ in range(3000)]
    unbound = fact_probe(counts_embedding(metas, False, rng), metas)
    assert unbound["long_only"] > 0.95  # every value is there, counted
    assert abs(unbound["bound"] - 0.5) < 0.04, unbound["bound_by_group"]
    for g in ("colour", "cell", "size", "orientation"):
        assert abs(unbound["bound_by_group"][g] - 0.5) < 0.08, g
    bound = fact_probe(counts_embedding(metas, True, rng), metas)
    assert bound["bound"] > 0.9 and min(bound["bound_by_group"].values()) > 0.85, bound["bound_by_group"]
