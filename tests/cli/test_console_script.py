"""The console script as a new user meets it: --help everywhere, one clear line for each mistake."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from llm2clip_cli.main import build_parser, main

COMMANDS = [
    [], ["data"], ["data", "scenes"], ["data", "restyle"], ["train"], ["train", "text"], ["train", "embed"], ["train", "clip"], ["export"],
    ["eval"],
    ["index"], ["index", "build"], ["serve"], ["demo"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "llm2clip")
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llm2clip") and len(out.splitlines()) > 3


def test_help_is_fast_and_imports_no_torch():
    code = "import sys; from llm2clip_cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_wrong_dataset_path(capsys, tmp_path):
    _one_line_error(capsys, ["train", "embed", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "e")],
                    "does not exist", "llm2clip data scenes")


def test_missing_model_bundle(capsys, tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "items.jsonl").write_text('{"id": "a", "image": "a.png", "captions": ["x"]}\n')
    _one_line_error(capsys, ["eval", "--model", str(tmp_path / "nobundle"), "--data", str(tmp_path / "ds")],
                    "nobundle")
    _one_line_error(capsys, ["index", "build", "--model", str(tmp_path / "nobundle"), "--data",
                             str(tmp_path / "ds"), "--out", str(tmp_path / "idx")], "nobundle")
    _one_line_error(capsys, ["serve", "--model", str(tmp_path / "nobundle"), "--port", "0"], "nobundle")


def test_missing_checkpoint(capsys, tmp_path):
    _one_line_error(capsys, ["export", "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "b")],
                    "llm2clip train clip")


def test_port_in_use(capsys, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        _one_line_error(capsys, ["demo", "--workdir", str(tmp_path / "w"), "--port", str(port)],
                        f"port {port}", "--port")
        assert not (tmp_path / "w").exists()  # it refused before doing any work


def test_bad_scene_arguments(capsys, tmp_path):
    # a bad flag value is a usage error: argparse's exit code 2, the same as every other user error
    with pytest.raises(SystemExit) as exc:
        main(["data", "scenes", "--out", str(tmp_path / "s"), "--n", "0", "--split", "test"])
    assert exc.value.code == 2
    assert "argument --n: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_parser_lists_the_contract_commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"data", "train", "export", "eval", "index", "serve", "demo"} <= set(sub.choices)


def test_options_come_from_the_config_dataclasses(capsys):
    from training.config import EmbedCfg, TrainCfg

    with pytest.raises(SystemExit):
        main(["train", "clip", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--preset {default,demo,demo-e160,simple,repro}" in out
    defaults = TrainCfg()
    assert f"passes over the training images (default {defaults.epochs})" in out
    assert f"(default {defaults.layer_decay})" in out and "--freeze-bn, --no-freeze-bn" in out
    with pytest.raises(SystemExit):
        main(["train", "embed", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"captions are cut here (default {EmbedCfg().max_tokens})" in out


@pytest.mark.parametrize("argv", [
    ["train", "clip", "--epochs", "0"], ["train", "clip", "--batch-size", "-8"], ["train", "text", "--steps", "0"],
    ["train", "embed", "--max-batch-tokens", "0"], ["demo", "--train-scenes", "0"],
])
def test_counts_must_be_positive(argv, capsys, tmp_path):
    required = {"clip": ["--data", "d", "--embeddings", "e", "--out", "o"], "text": ["--data", "d", "--out", "o"],
                "embed": ["--data", "d", "--out", "o"]}
    with pytest.raises(SystemExit) as exc:
        main([*argv, *required.get(argv[1], [])])
    assert exc.value.code == 2
    assert f"argument {argv[-2]}: must be at least 1" in capsys.readouterr().err


def test_validation_flags_go_together(capsys, tmp_path):
    _one_line_error(capsys, ["train", "clip", "--data", str(tmp_path), "--embeddings", str(tmp_path), "--out",
                             str(tmp_path / "c"), "--val", str(tmp_path)], "--val-embeddings")
    assert not (tmp_path / "c").exists()


def test_a_text_encoder_folder_without_config_names_the_flag(capsys, tmp_path):
    from llm2clip.data.dataset import Item, write_items

    write_items(tmp_path / "d", [Item(id="a", image="a.png", captions={"long": "x"})])
    _one_line_error(capsys, ["train", "embed", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "e"),
                             "--text-encoder", str(tmp_path)], "--text-encoder", "config.json")
