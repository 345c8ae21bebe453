"""Caption retrieval accuracy against hand-computed values, on the tiny LLM, and through `llm2clip eval`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from llm2clip.data.dataset import Item, write_items
from training import caption_retrieval as cr
from training import eval_cli

LONGS = ["long zero", "long one", "long two", "long three", "long four"]
SHORTS = ["short zero", "short one", "short one", "short three", "short four"]  # items 1 and 2 share theirs


def basis(k: int) -> np.ndarray:
    return np.eye(5, dtype=np.float32)[k]


# short i -> e_i (the shared "short one" is e_1); longs: 0 -> e0, 1 and 2 -> e1 (ties between the twins),
# 3 -> 0.6 e3 + 0.8 e4 (closer to short four than to its own), 4 -> e4
TABLE = {
    "short zero": basis(0), "short one": basis(1), "short three": basis(3), "short four": basis(4),
    "long zero": basis(0), "long one": basis(1), "long two": basis(1),
    "long three": 0.6 * basis(3) + 0.8 * basis(4), "long four": basis(4),
}


def make_set(root):
    items = [Item(id=f"c{k}", image=f"img/{k}.png", captions={"long": LONGS[k], "short": SHORTS[k]})
             for k in range(5)]
    write_items(root, items)
    return root


@pytest.fixture
def fake(tmp_path, monkeypatch):
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "config.json").write_text("{}")
    calls = []

    def fake_embed(folder, texts, max_tokens=512, progress=True, precision="bf16", encoder=None):
        calls.append(list(texts))
        return np.stack([TABLE[t] for t in texts])

    monkeypatch.setattr(cr, "embed_texts", fake_embed)
    return enc, make_set(tmp_path / "data"), calls


def test_hand_computed_accuracy(fake):
    enc, data, calls = fake
    r = cr.caption_retrieval(enc, data, progress=False)
    # long -> short: 0 hit; 1 and 2 tie on the shared "short one" (text hit, strict miss); 3 finds short four
    # (miss); 4 hit
    assert r["long_to_short"] == pytest.approx(4 / 5)
    assert r["long_to_short_strict"] == pytest.approx(2 / 5)
    # short -> long: "short one" scores long one and long two alike (text hit, strict miss); short three only
    # sees long three (0.6); short four prefers long four (1.0) to long three (0.8)
    assert r["short_to_long"] == pytest.approx(1.0)
    assert r["short_to_long_strict"] == pytest.approx(3 / 5)
    assert r["caption_retrieval"] == pytest.approx(0.9)
    assert r["caption_retrieval_strict"] == pytest.approx(0.5)
    assert (r["n"], r["unique_long"], r["unique_short"]) == (5, 5, 4)
    # each distinct text embedded once
    assert len(calls) == 1 and sorted(calls[0]) == sorted(set(LONGS + SHORTS))


def test_a_tie_with_another_text_is_a_miss():
    same = np.ones((3, 4), np.float32) / 2  # a collapsed encoder: every caption alike
    r = cr.retrieval_accuracy(same, same, ["a", "b", "c"], ["x", "y", "z"])
    assert r["caption_retrieval"] == 0.0 and r["caption_retrieval_strict"] == 0.0


def test_tiny_llm_end_to_end(tiny_llm_dir, tmp_path):
    data = make_set(tmp_path / "d")
    r = cr.caption_retrieval(tiny_llm_dir, data, progress=False)
    assert all(0.0 <= r[k] <= 1.0 for k in cr.METRICS)
    emb = cr.embed_texts(tiny_llm_dir, ["short one", "long one", "short one"], progress=False)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb[0], emb[2], atol=1e-2)  # same text, other batch


def parse(argv):
    parser = argparse.ArgumentParser(prog="llm2clip")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_cli.add_parser(sub)
    return parser.parse_args(argv)


def test_cli_text_encoder_json(fake, capsys):
    enc, data, _ = fake
    assert eval_cli.run(parse(["eval", "--text-encoder", str(enc), "--data", str(data), "--json",
                               "--no-progress"])) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    result = json.loads(out)
    assert result["caption_retrieval"] == pytest.approx(0.9) and result["n"] == 5
    assert eval_cli.run(parse(["eval", "--text-encoder", str(enc), "--data", str(data), "--no-progress"])) == 0
    table = capsys.readouterr().out
    assert "long -> short" in table and "90.0" in table


def test_cli_needs_a_model_or_a_text_encoder(tmp_path, capsys):
    data = make_set(tmp_path / "d")
    assert eval_cli.run(parse(["eval", "--data", str(data), "--json"])) == 2
    err = capsys.readouterr().err
    assert "--text-encoder" in err and "--model" in err


def test_cli_reports_both(fake, tmp_path, capsys, monkeypatch):
    import training.eval as ev

    enc, data, _ = fake
    fake_bundle = {"t2i_r1": 0.5, "n": 5, "dataset": str(data), "timing": {"total_s": 0.0}}
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: dict(fake_bundle))
    assert eval_cli.run(parse(["eval", "--model", str(tmp_path / "bundle"), "--text-encoder", str(enc), "--data",
                               str(data), "--json", "--no-progress"])) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["t2i_r1"] == 0.5 and result["caption_retrieval"] == pytest.approx(0.9)
    assert result["long_to_short_strict"] == pytest.approx(0.4) and result["n"] == 5
    assert result["text_encoder"]["path"] == str(enc.resolve()) and "caption_retrieval_s" in result["timing"]


def test_paraphrase_twin_probe_scores_an_oracle_one_and_a_blind_encoder_zero(tmp_path):
    from llm2clip.data import generate_scenes, read_dataset

    generate_scenes(tmp_path / "t", 6, "test", 3)
    ds = read_dataset(tmp_path / "t")
    pairs, paraphrases = cr.paraphrase_twin_texts(ds)
    assert pairs and all(p and p != it.long for p, it in zip(paraphrases, ds.items, strict=True))
    # an oracle: a scene's caption and its paraphrase share one vector, other scenes are orthogonal
    n = len(ds)
    table = {it.long: np.eye(n)[i] for i, it in enumerate(ds.items)}
    table.update({p: np.eye(n)[i] for i, p in enumerate(paraphrases)})
    oracle = cr.paraphrase_twin_accuracy(lambda texts: np.stack([table[t] for t in texts]), ds)
    assert oracle["accuracy"] == 1.0 and oracle["n_pairs"] == len(pairs)
    assert sum(oracle[k]["n_pairs"] for k in ("early", "late") if k in oracle) == len(pairs)
    by = oracle["by_attribute"]
    assert sum(g["n_pairs"] for g in by.values()) == len(pairs) and all(g["accuracy"] == 1.0 for g in by.values())
    assert set(by) == {ds.items[a].meta["twin_diff"]["attribute"] for a, _ in pairs}
    # blind to the difference: every text the same vector, a tie each time, and a tie is a miss
    blind = cr.paraphrase_twin_accuracy(lambda texts: np.ones((len(texts), 4)) / 2, ds)
    assert blind["accuracy"] == 0.0
    # no twins (a train split): nothing to report
    generate_scenes(tmp_path / "tr", 3, "train", 3)
    assert cr.paraphrase_twin_accuracy(lambda texts: np.ones((len(texts), 4)), tmp_path / "tr") is None
