"""The validation protocol: the rule, the val-only guard, and a real choice among real (tiny) bundles."""

from __future__ import annotations

import json
import shutil

import pytest

from llm2clip.data import generate_scenes
from research.selection import (
    RULE,
    SelectionError,
    choose,
    score_on_val,
    select,
    selection_record,
    val_summary,
)


def _summary(r1: list[float], twin: list[float]) -> dict:
    return val_summary([{"t2i_r1": a, "near_twin": {"long": {"t2i": b}}} for a, b in zip(r1, twin, strict=True)])


def test_the_rule_ranks_val_r1_then_twins_then_fewer_steps_then_order():
    s = {"a": _summary([0.2, 0.4], [0.9, 0.9]), "b": _summary([0.35, 0.35], [0.5, 0.5])}
    assert s["a"]["t2i_r1"]["mean"] == pytest.approx(0.3) and s["a"]["t2i_r1"]["per_seed"] == [0.2, 0.4]
    assert choose(s, {}) == "b"  # the higher mean R@1 wins, whatever the twins say
    s["b"] = _summary([0.3, 0.3], [0.5, 0.5])  # a tie on R@1: twin accuracy decides
    assert choose(s, {}) == "a"
    s["b"] = _summary([0.4, 0.2], [0.9, 0.9])  # a tie on both: fewer stage-1 steps, then the earlier one
    assert choose(s, {"a": 400, "b": 200}) == "b"
    assert choose(s, {}) == "a"
    assert "val split" in RULE
    with pytest.raises(SelectionError, match="at least one candidate"):
        choose({}, {})


def test_a_val_corpus_without_twins_cannot_decide():
    with pytest.raises(SelectionError, match="no near twins"):
        val_summary([{"t2i_r1": 0.5, "near_twin": None}])


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    generate_scenes(root / "val", 6, "val", 1, progress=False)
    generate_scenes(root / "test", 6, "test", 2, progress=False)
    return root


def test_score_on_val_refuses_any_other_split(tiny_bundle, corpora, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "row" / "bundle")
    with pytest.raises(SelectionError, match="val split only"):
        score_on_val(bundle, corpora / "test")
    assert not (tmp_path / "row" / "val.json").exists()
    result = score_on_val(bundle, corpora / "val")
    assert result["dataset"] == str(corpora / "val") and result["n"] == 6 and result["near_twin"]["n_pairs"] == 6
    assert json.loads((tmp_path / "row" / "val.json").read_text()) == result  # cached beside the bundle


def test_select_scores_every_candidate_and_seed_on_val_only(tiny_bundle, corpora, tmp_path):
    built = []

    def build(name):
        def at(k):
            built.append((name, k))
            folder = tmp_path / name / f"seed-{k}" / "bundle"
            return folder if folder.is_dir() else shutil.copytree(tiny_bundle, folder)
        return at

    # no test path is given: the test corpus is moved away so that nothing could read it
    shutil.move(corpora / "test", tmp_path / "elsewhere")
    record = select("recipe", {"x": build("x"), "y": build("y")}, 2, corpora / "val", steps={"x": 2, "y": 1})
    assert built == [("x", 0), ("x", 1), ("y", 0), ("y", 1)]
    assert record["split"] == "val" and record["dataset"] == str(corpora / "val") and record["rule"] == RULE
    scored = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("val.json"))
    assert scored == ["x/seed-0/val.json", "x/seed-1/val.json", "y/seed-0/val.json", "y/seed-1/val.json"]
    assert all(json.loads((tmp_path / p).read_text())["dataset"] == str(corpora / "val") for p in scored)
    # the same bundle everywhere: every score ties, and the rule takes the candidate with fewer steps
    assert record["candidates"]["x"] == record["candidates"]["y"] and record["chosen"] == "y"
    assert record["candidates"]["x"]["seeds"] == 2
    full = selection_record([record], {"stage 2": "fixed"})
    assert full["choices"] == [record] and full["fixed"] == {"stage 2": "fixed"} and "val split" in full["protocol"]
