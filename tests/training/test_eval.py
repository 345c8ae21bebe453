"""Retrieval evaluation: recall and near-twin accuracy against hand-computed values, and `llm2clip eval`."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from llm2clip.data.dataset import Item, write_items
from training import eval_cli
from training.eval import evaluate, evaluate_encoders, ranks, recall_at, retrieval_metrics, twin_pairs

N = 12
HIGH, OWN = 0.9, 0.5
# t2i: caption q scores its own image OWN and the images in DISTRACTORS[q] HIGH (the rest 0), so its
# right image ranks len(DISTRACTORS[q]) (0-based)
DISTRACTORS = {4: [0], 5: [0, 1], 6: [0, 1, 2, 3, 4], 7: [0, 1, 2, 3, 4, 5, 6, 8, 9, 10]}
# meta["twin_of"]: "nope" is not in the dataset and a self reference is no twin; both are ignored
TWINS = {0: ["s04"], 4: ["s00"], 7: ["s08", "nope"], 8: ["s09", "s08"]}
# where the differing object is first named, and what differs (scene 8 has no twin_diff)
TWIN_META = {0: {"twin_late": True, "twin_diff": {"object": 0, "attribute": "colour"}},
             4: {"twin_late": False, "twin_diff": {"object": 0, "attribute": "colour"}},
             7: {"twin_late": True, "twin_diff": {"object": 1, "attribute": "cell"}},
             8: {"twin_late": False}}


def sim_matrix() -> np.ndarray:
    s = np.eye(N) * OWN
    for q, js in DISTRACTORS.items():
        s[q, js] = HIGH
    return s


class FakeImageEncoder:
    """Image k is a solid PNG whose red value encodes k; its embedding is the k-th basis vector."""

    def encode(self, images):
        return np.stack([np.eye(N, dtype=np.float32)[im.getpixel((0, 0))[0] // 20] for im in images])


class FakeTextEncoder:
    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.calls: list[int] = []

    def encode(self, texts, progress=None):
        self.calls.append(len(texts))
        if progress is not None:
            progress(len(texts), 0)
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def make_eval_set(root):
    items = []
    for k in range(N):
        rel = f"img/{k}.png"
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (20 * k + 5, 100, 100)).save(root / rel)
        meta = {"twin_of": TWINS[k], **TWIN_META.get(k, {})} if k in TWINS else {}
        items.append(Item(id=f"s{k:02d}", image=rel, captions={"long": f"long {k}", "short": f"short {k}"},
                          meta=meta))
    write_items(root, items)
    return root


@pytest.fixture
def fakes(tmp_path):
    root = make_eval_set(tmp_path / "eval")
    s = sim_matrix()
    table = {f"long {k}": s[k] for k in range(N)}
    # every short caption embeds alike: a collapsed text side, all ties
    table.update({f"short {k}": np.full(N, 1 / np.sqrt(N)) for k in range(N)})
    return root, FakeImageEncoder(), FakeTextEncoder(table)


def test_recall_matches_hand_computed_values(fakes):
    root, img, txt = fakes
    result = evaluate_encoders((img, txt), root, batch_size=5, progress=False)
    # t2i ranks [0,0,0,0,1,2,5,10,0,0,0,0]
    assert result["t2i_r1"] == pytest.approx(8 / 12)
    assert result["t2i_r5"] == pytest.approx(10 / 12)
    assert result["t2i_r10"] == pytest.approx(11 / 12)
    # i2t rank of image g = captions scoring it HIGH: [4,3,2,2,2,1,1,0,1,1,1,0]
    assert result["i2t_r1"] == pytest.approx(2 / 12)
    assert result["i2t_r5"] == pytest.approx(1.0)
    assert result["i2t_r10"] == pytest.approx(1.0)
    assert result["n"] == N
    keys = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")
    assert result["long"] == {k: result[k] for k in keys}
    # all short captions tie on every image: a tie is not a hit
    assert result["short"] == dict.fromkeys(result["long"], 0.0)
    assert result["model"] is None and result["dataset"] == str(root)
    # the parts account for the whole run (each rounded to 1 ms)
    timing = result["timing"]
    parts = ("load_s", "encode_images_s", "encode_texts_s", "metrics_s")
    assert set(timing) == {*parts, "total_s"}
    assert sum(timing[k] for k in parts) == pytest.approx(timing["total_s"], abs=0.003)
    # images in batches of 5, each caption set in one call
    assert txt.calls == [N, N]


def test_near_twin_accuracy_matches_hand_computed_values(fakes):
    root, img, txt = fakes
    result = evaluate_encoders((img, txt), root, progress=False)
    twin = result["near_twin"]
    # pairs (0,4) (4,0) (7,8) (8,9); t2i: s[a,a] > s[a,b] -> T F F T; i2t: s[a,a] > s[b,a] -> F T T T
    assert twin["n_pairs"] == 4
    assert twin["long"] == {"t2i": pytest.approx(0.5), "i2t": pytest.approx(0.75)}
    assert twin["short"] == {"t2i": 0.0, "i2t": 0.0}
    # late: (0,4) (7,8) -> t2i T F, i2t F T; early: (4,0) (8,9) -> t2i F T, i2t T T
    assert twin["long_by"]["mention"] == {"late": {"t2i": 0.5, "i2t": 0.5, "n_pairs": 2},
                                          "early": {"t2i": 0.5, "i2t": 1.0, "n_pairs": 2}}
    # colour: (0,4) (4,0) -> t2i T F, i2t F T; cell: (7,8) -> t2i F, i2t T; (8,9) has no twin_diff
    assert twin["long_by"]["attribute"] == {"colour": {"t2i": 0.5, "i2t": 0.5, "n_pairs": 2},
                                            "cell": {"t2i": 0.0, "i2t": 1.0, "n_pairs": 1}}


def test_per_query_outcomes_agree_with_the_metrics(fakes):
    root, img, txt = fakes
    assert "per_query" not in evaluate_encoders((img, txt), root, progress=False)  # opt-in only
    result = json.loads(json.dumps(evaluate_encoders((img, txt), root, progress=False, per_query=True)))
    q = result["per_query"]
    assert q["ids"] == [f"s{k:02d}" for k in range(N)]
    # caption q ranks its image after the DISTRACTORS[q] images; the collapsed short captions tie everywhere
    assert q["ranks"]["long"]["t2i"] == [0, 0, 0, 0, 1, 2, 5, 10, 0, 0, 0, 0]
    assert q["ranks"]["short"]["t2i"] == [N - 1] * N
    for caption in ("long", "short"):
        for direction in ("t2i", "i2t"):
            r = np.array(q["ranks"][caption][direction])
            assert {k: float((r < k).mean()) for k in (1, 5, 10)} == {
                k: pytest.approx(result[caption][f"{direction}_r{k}"]) for k in (1, 5, 10)}
    assert q["twin_pairs"] == [[0, 4], [4, 0], [7, 8], [8, 9]]
    assert q["twin_hits"]["long"] == {"t2i": [1, 0, 0, 1], "i2t": [0, 1, 1, 1]}  # as in the test above
    assert q["twin_hits"]["short"] == {"t2i": [0] * 4, "i2t": [0] * 4}


def test_evaluate_per_query_adds_only_the_outcomes(tiny_bundle, tmp_path):
    from training.eval import evaluate_per_query

    root = make_eval_set(tmp_path / "e")
    plain = evaluate(tiny_bundle, root, batch_size=4, progress=False)
    more = evaluate_per_query(tiny_bundle, root, batch_size=4, progress=False)
    assert set(more) - set(plain) == {"per_query"}
    assert {k: v for k, v in more.items() if k not in ("timing", "per_query")} == {
        k: v for k, v in plain.items() if k != "timing"}
    assert np.mean(np.array(more["per_query"]["ranks"]["long"]["t2i"]) < 1) == pytest.approx(plain["t2i_r1"])


def test_no_twins_no_near_twin_block(tmp_path):
    root = make_eval_set(tmp_path / "e")
    lines = [json.loads(x) for x in (root / "items.jsonl").read_text().splitlines()]
    for obj in lines:
        obj["meta"] = {}
    (root / "items.jsonl").write_text("".join(json.dumps(o) + "\n" for o in lines))
    s = sim_matrix()
    txt = FakeTextEncoder({**{f"long {k}": s[k] for k in range(N)}, **{f"short {k}": s[k] for k in range(N)}})
    result = evaluate_encoders((FakeImageEncoder(), txt), root, progress=False)
    assert result["near_twin"] is None
    assert result["short"] == result["long"]


def test_ranks_count_ties_against_the_right_answer():
    sim = np.array([
        [0.9, 0.1, 0.2],  # right answer on top
        [0.5, 0.5, 0.1],  # tie with a wrong one
        [0.8, 0.9, 0.3],  # two above
    ])
    assert list(ranks(sim)) == [0, 1, 2]
    assert recall_at(sim, ks=(1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    # columns are the other direction: images 0 and 2 rank their caption first (0.9 of 0.9/0.5/0.8,
    # 0.3 of 0.2/0.1/0.3), image 1 does not (0.5 under 0.9)
    m = retrieval_metrics(sim, np.eye(3), ks=(1,))
    assert m == {"t2i_r1": pytest.approx(1 / 3), "i2t_r1": pytest.approx(2 / 3)}


def test_twin_pairs_ignore_unknown_and_self(fakes):
    from llm2clip.data.dataset import read_dataset

    root, _, _ = fakes
    assert twin_pairs(read_dataset(root)) == [(0, 4), (4, 0), (7, 8), (8, 9)]


def test_broken_eval_image_is_an_error_naming_the_item(fakes):
    from llm2clip.errors import DatasetError

    root, img, txt = fakes
    (root / "img/3.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="s03"):
        evaluate_encoders((img, txt), root, progress=False)


def parse(argv):
    parser = argparse.ArgumentParser(prog="llm2clip")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_cli.add_parser(sub)
    return parser.parse_args(argv)


def test_cli_json_prints_one_object(tiny_bundle, tmp_path, capsys):
    from llm2clip.bundle import load_bundle

    root = make_eval_set(tmp_path / "e")
    args = parse(["eval", "--model", str(tiny_bundle), "--data", str(root), "--json", "--batch-size", "4"])
    assert eval_cli.run(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # the whole of stdout is one JSON object
    assert captured.out.count("\n") == 1
    assert set(result) >= {"t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "n", "long", "short",
                           "near_twin", "model", "dataset", "timing"}
    assert result["n"] == N and result["model"] == load_bundle(tiny_bundle).fingerprint
    # what the library computes for the same bundle and data
    direct = evaluate(tiny_bundle, root, batch_size=4, progress=False)
    assert {k: v for k, v in result.items() if k != "timing"} == json.loads(json.dumps(
        {k: v for k, v in direct.items() if k != "timing"}))
    assert result["near_twin"]["n_pairs"] == 4
    assert "eval images" in captured.err  # progress went to stderr

    args = parse(["eval", "--model", str(tiny_bundle), "--data", str(root), "--no-progress"])
    assert eval_cli.run(args) == 0
    table = capsys.readouterr().out
    assert "long captions" in table and "near twins (4 pairs)" in table


@pytest.mark.parametrize("case", ["no_dataset", "not_a_bundle"])
def test_cli_bad_paths_one_line_exit_2(case, tiny_bundle, tmp_path, capsys):
    from llm2clip_cli.main import main

    root = make_eval_set(tmp_path / "e")
    model, data = (tiny_bundle, tmp_path / "missing") if case == "no_dataset" else (root, root)
    assert main(["eval", "--model", str(model), "--data", str(data), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llm2clip: error:")
    assert str(data if case == "no_dataset" else model) in lines[0]
