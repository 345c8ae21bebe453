"""The fact check of research.llm_rewrites on captions whose facts are known (no model)."""

from __future__ import annotations

import pytest

from llm2clip.data import generate_scenes, read_dataset
from research.llm_rewrites import check_rewrite


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    out = tmp_path_factory.mktemp("rw") / "train"
    generate_scenes(out, 6, "train", 0, progress=False)
    return read_dataset(out).items


def test_the_source_and_a_paraphrase_are_faithful(items):
    from llm2clip.data import paraphrase_long

    for item in items:
        source = item.captions["long"]
        own = check_rewrite(source, item.meta, source)
        assert own["faithful"] and own["kept"] == len(item.meta["objects"]) and own["copied"] == 1.0
        other = check_rewrite(paraphrase_long(item.meta, 7, avoid=[source]), item.meta, source)
        assert other["kept"] == own["kept"] and other["invented"] == 0 and other["copied"] < 1.0


def test_a_dropped_object_an_invented_one_and_a_loop_are_caught(items):
    item = max(items, key=lambda it: len(it.meta["objects"]))
    obj = item.meta["objects"][0]
    source = item.captions["long"]
    dropped = ". ".join(s for s in source.split(". ") if obj["colour"] not in s)
    assert check_rewrite(dropped, item.meta, source)["kept"] < len(item.meta["objects"])
    colours = {o["colour"] for o in item.meta["objects"]}
    absent = next(c for c in ("red", "green", "blue", "pink", "white", "black", "yellow") if c not in colours)
    invented = check_rewrite(source + f" There is also a small {absent} coat.", item.meta, source)
    assert invented["invented"] == 1 and not invented["faithful"]
    loop = check_rewrite(source + " The object is a single item." * 3, item.meta, source)
    assert loop["degenerate"] and not loop["faithful"]
