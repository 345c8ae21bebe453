"""Restyling a scene corpus folder, and the CLI that does it: same images, unseen captions, clear refusals."""

from __future__ import annotations

import os

import pytest

from llm2clip.data import read_dataset
from llm2clip.data.restyle import restyle_corpus
from llm2clip.errors import DatasetError
from llm2clip_cli.main import main


@pytest.fixture(scope="module")
def own_and_unseen(tmp_path_factory):
    """A test corpus written by the CLI in both styles."""
    root = tmp_path_factory.mktemp("cli")
    for style in ("own", "unseen"):
        argv = ["data", "scenes", "--out", str(root / style), "--n", "6", "--split", "test", "--seed", "2"]
        assert main([*argv, "--caption-style", style]) == 0
    return root / "own", root / "unseen"


def test_restyle_gives_what_the_unseen_style_writes(own_and_unseen, tmp_path, capsys):
    own, unseen = own_and_unseen
    out = tmp_path / "restyled"
    assert main(["data", "restyle", "--data", str(own), "--out", str(out), "--seed", "2"]) == 0
    assert "6 scenes" in capsys.readouterr().out
    assert (out / "items.jsonl").read_bytes() == (unseen / "items.jsonl").read_bytes()
    for item in read_dataset(out):
        assert (out / item.image).read_bytes() == (own / item.image).read_bytes()
        # linked, not copied, where the file system allows it
        assert os.stat(out / item.image).st_ino == os.stat(own / item.image).st_ino


def test_restyle_seed_changes_only_the_phrasing(own_and_unseen, tmp_path):
    own, unseen = own_and_unseen
    other = restyle_corpus(own, tmp_path / "seed5", seed=5, progress=False)
    first = read_dataset(unseen)
    assert [it.meta["objects"] for it in other] == [it.meta["objects"] for it in first]
    assert all(a.long != b.long for a, b in zip(other, first, strict=True))


def test_restyle_again_replaces_its_own_output(own_and_unseen, tmp_path):
    own, _ = own_and_unseen
    out = tmp_path / "twice"
    restyle_corpus(own, out, progress=False)
    restyle_corpus(own, out, seed=1, progress=False)
    assert len(read_dataset(out)) == 6


def test_refusals(own_and_unseen, tmp_path, capsys):
    own, _ = own_and_unseen
    assert main(["data", "restyle", "--data", str(own), "--out", str(own)]) == 2
    assert "is the corpus being restyled" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "items.jsonl").write_text('{"id": "a", "image": "a.png", "captions": ["a cat"]}\n')
    assert main(["data", "restyle", "--data", str(foreign), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm2clip: error:") and "no scene graph" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before writing anything
    with pytest.raises(DatasetError, match="can be restyled to unseen"):
        restyle_corpus(own, tmp_path / "p", style="own")


def test_help_explains_the_styles(capsys):
    with pytest.raises(SystemExit):
        main(["data", "scenes", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--caption-style {own,unseen}" in out and "evaluation only" in out
    with pytest.raises(SystemExit):
        main(["data", "restyle", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "hard-linked" in out and "llm2clip eval --data OUT" in out
