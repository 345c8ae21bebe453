"""`llm2clip index build` through its own parser and run()."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from index_builder import cli
from llm2clip.data.dataset import Item, write_items
from llm2clip_cli.main import main


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="llm2clip")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_parser(sub)
    return parser.parse_args(argv)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    rng = np.random.default_rng(3)
    items = []
    for i in range(5):
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / f"images/{i}.png")
        items.append(Item(id=f"x{i}", image=f"images/{i}.png",
                          captions={"long": f"a long caption number {i}", "short": f"short {i}"}))
    (root / "images/4.png").write_bytes(b"not a png")
    write_items(root, items)
    return root


def test_build_both_by_default(tiny_bundle, dataset, tmp_path, capsys):
    out = tmp_path / "indexes"
    args = parse(["index", "build", "--model", str(tiny_bundle), "--data", str(dataset), "--out", str(out),
                  "--captions", "all", "--batch-size", "2", "--workers", "1", "--threads", "1",
                  "--max-batch-tokens", "300", "--precision", "fp32", "--no-progress"])
    assert cli.run(args) == 0
    image = json.loads((out / "image" / "manifest.json").read_text())
    text = json.loads((out / "text" / "manifest.json").read_text())
    assert (image["modality"], image["count"]) == ("image", 4)
    assert image["build"]["skipped"]["reasons"] == {"decode_error": 1}
    assert (text["modality"], text["count"]) == ("text", 10)
    assert image["build"]["batch_size"] == 2
    assert text["build"]["captions"] == ["all"]
    assert text["build"]["text_encoder"]["precision"] == "fp32"
    assert text["build"]["text_encoder"]["max_batch_tokens"] == 300
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("image index: 4 rows") and "decode_error 1" in lines[0]
    assert lines[1].startswith("text index: 10 rows")


def test_single_modality_writes_out_itself(tiny_bundle, dataset, tmp_path):
    out = tmp_path / "img"
    args = parse(["index", "build", "--model", str(tiny_bundle), "--data", str(dataset), "--out", str(out),
                  "--modality", "text", "--captions", "short", "--no-progress"])
    assert cli.run(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modality"] == "text" and manifest["build"]["captions"] == ["short"]
    assert not (out / "image").exists()


@pytest.mark.parametrize("case", ["no_dataset", "not_a_bundle", "out_is_file", "bad_factory"])
def test_errors_are_one_line_and_exit_2(case, tiny_bundle, dataset, tmp_path, capsys):
    model, data, out, extra = tiny_bundle, dataset, tmp_path / "out", []
    if case == "no_dataset":
        data = tmp_path / "nowhere"
        fragment = f"dataset folder {data} does not exist"
    elif case == "not_a_bundle":
        model = dataset
        fragment = f"{dataset} is not a model bundle"
    elif case == "out_is_file":
        out.write_text("x")
        fragment = f"--out {out} is a file"
    else:
        extra = ["--factory", "NoSuchIndex42"]
        fragment = "'NoSuchIndex42' is not a FAISS index factory string"
    argv = ["index", "build", "--model", str(model), "--data", str(data), "--out", str(out), "--no-progress",
            *extra]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"llm2clip: error: {fragment}"), err
    assert "Traceback" not in captured.err


def test_flags_are_validated_by_the_parser():
    with pytest.raises(SystemExit):
        parse(["index", "build", "--model", "m", "--data", "d", "--out", "o", "--batch-size", "0"])
    with pytest.raises(SystemExit):
        parse(["index", "build", "--model", "m", "--data", "d", "--out", "o", "--modality", "audio"])
    args = parse(["index", "build", "--model", "m", "--data", "d", "--out", "o", "--captions", "long,short"])
    assert args.captions == ("long", "short") and args.modality == "both" and args.workers == 2
    assert args.shard_size == 4096
    with pytest.raises(SystemExit):
        parse(["index", "build", "--model", "m", "--data", "d", "--out", "o", "--shard-size", "0"])


def test_add_flags(capsys):
    args = parse(["index", "add", "--index", "i", "--data", "d"])
    assert (args.model, args.modality, args.captions, args.precision) == (None, None, None, None)
    assert args.func is cli.run_add
    args = parse(["index", "add", "--index", "i", "--data", "d", "--captions", "long,short", "--modality", "text"])
    assert args.captions == ("long", "short") and args.modality == "text"
    with pytest.raises(SystemExit):
        parse(["index", "add", "--index", "i", "--data", "d", "--modality", "both"])
    with pytest.raises(SystemExit):
        main(["index", "add", "--help"])
    assert "whose id the index lacks" in capsys.readouterr().out


def test_add_to_a_folder_without_indexes_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["index", "add", "--index", str(tmp_path / "empty"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"llm2clip: error: {tmp_path / 'empty'} is no index bundle and holds none (image/, text/): name an "
                   "index bundle, or build one with `llm2clip index build`"]


def test_index_choice_flags():
    base = ["index", "build", "--model", "m", "--data", "d", "--out", "o"]
    args = parse([*base, "--memory-budget", "1.5G", "--target-recall", "0.9", "--memory-mappable"])
    assert (args.memory_budget, args.target_recall, args.memory_mappable) == (int(1.5 * (1 << 30)), 0.9, True)
    assert parse([*base, "--memory-budget", "512MiB"]).memory_budget == 512 << 20
    assert parse(base).memory_budget is None and parse(base).target_recall == 0.95
    for bad in (["--memory-budget", "lots"], ["--memory-budget", "0"], ["--target-recall", "1.5"],
                ["--target-recall", "x"]):
        with pytest.raises(SystemExit):
            parse([*base, *bad])


def test_the_index_flags_reach_the_manifest(tiny_bundle, dataset, tmp_path):
    """A budget too small for the vectors is recorded with the chooser's reason; the recall target too."""
    out = tmp_path / "idx"
    assert main(["index", "build", "--model", str(tiny_bundle), "--data", str(dataset), "--out", str(out),
                 "--modality", "image", "--memory-budget", "256", "--target-recall", "0.9", "--no-progress"]) == 0
    tuning = json.loads((out / "manifest.json").read_text())["tuning"]
    assert tuning["target_recall"] == 0.9 and tuning["chooser"]["memory_budget_bytes"] == 256
    assert "exceed the 256 B budget" in tuning["chooser"]["reason"], tuning["chooser"]
