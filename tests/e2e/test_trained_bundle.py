"""The trained bundle itself: retrieval works before any HTTP is involved."""

import json

import pytest

from llm2clip_cli.main import main as cli

# the session fixture trains and exports a real bundle (minutes)
pytestmark = pytest.mark.slow


def test_eval_of_the_trained_bundle(trained, capsys):
    capsys.readouterr()
    assert cli(["eval", "--model", str(trained["bundle"]), "--data", str(trained["data"]), "--json",
                "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 48
    # trained and evaluated on the same 48 scenes: far above chance (R@5 = 5/48 ~ 0.10)
    assert result["t2i_r5"] >= 0.5, result
    assert result["i2t_r5"] >= 0.5, result
