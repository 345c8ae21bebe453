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

    class TableEncoder:
        def encode(self, texts, progress=None):
            calls.append(list(texts))
            return np.stack([TABLE[t] for t in texts])

    def fake_folder_encoder(folder, max_tokens=512, precision="bf16", prefix=None):
        from training.embed import text_encoder_info

        about = {"text_encoder": text_encoder_info(folder), "max_tokens": max_tokens, "precision": precision}
        return cr.MemoEncoder(TableEncoder(), about)

    monkeypatch.setattr(cr, "folder_encoder", fake_folder_encoder)
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
    r = cr.caption_retrieval(tiny_llm_dir, data, progress=False, precision="fp32")
    # the accuracies of the tiny LLM's own embeddings of the distinct texts, in the order it embeds them
    unique = list(dict.fromkeys(LONGS + SHORTS))
    emb = cr.embed_texts(tiny_llm_dir, unique, progress=False, precision="fp32")
    row = {t: i for i, t in enumerate(unique)}
    expected = cr.retrieval_accuracy(emb[[row[t] for t in LONGS]], emb[[row[t] for t in SHORTS]], LONGS, SHORTS)
    assert {k: r[k] for k in cr.METRICS} == expected
    assert (r["n"], r["unique_short"], r["max_tokens"], r["precision"]) == (5, 4, 512, "fp32")
    assert r["text_encoder"]["path"] == str(tiny_llm_dir.resolve())
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
    from llm2clip_cli.main import main

    data = make_set(tmp_path / "d")
    assert main(["eval", "--data", str(data), "--json"]) == 2
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


class CountingEncoder:
    """Each text's vector from its characters, and every call's texts recorded."""

    precision = "fp32"

    def __init__(self):
        self.calls = []

    def encode(self, texts, progress=None):
        self.calls.append(list(texts))
        if progress is not None:
            progress(len(texts), 7 * len(texts))
        emb = np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], np.float32).reshape(-1, 3)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-9)

    def describe(self):
        return {"backend": "counting"}


def test_memo_encoder_runs_each_distinct_text_once_and_reports_every_text():
    inner = CountingEncoder()
    memo = cr.MemoEncoder(inner, {"precision": "fp32"})
    done = []
    first = memo.encode(["a", "bb", "a"], progress=lambda n, _t: done.append(n))
    assert inner.calls == [["a", "bb"]] and sum(done) == 3
    assert np.array_equal(first[0], first[2])
    second = memo.encode(["bb", "ccc"], progress=lambda n, _t: done.append(n))
    assert inner.calls[-1] == ["ccc"] and memo.encoded == 3 and sum(done) == 5
    assert np.array_equal(second[0], first[1])  # the stored vector, not a second run
    assert memo.encode([]).shape == (0, 3) and memo.describe() == {"backend": "counting"}


def test_retrieval_and_twin_probe_share_the_long_captions(tmp_path):
    from llm2clip.data import generate_scenes, read_dataset

    generate_scenes(tmp_path / "t", 6, "test", 3)
    ds = read_dataset(tmp_path / "t")
    memo = cr.MemoEncoder(CountingEncoder(), {"precision": "fp32"})
    acc = cr.caption_retrieval_of(memo, ds, progress=False)
    assert acc["precision"] == "fp32" and acc["n"] == 6
    before = memo.encoded
    assert before == len({it.long for it in ds.items} | {it.short for it in ds.items})
    twins = cr.paraphrase_twin_accuracy(memo.encode, ds)
    pairs, paraphrases = cr.paraphrase_twin_texts(ds)
    used = {i for p in pairs for i in p}
    # only the paraphrases are new: the long captions were embedded for the retrieval metrics
    assert twins is not None and memo.encoded - before == len({paraphrases[i] for i in used})
