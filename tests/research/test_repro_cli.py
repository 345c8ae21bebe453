"""`llm2clip repro`'s own part: flags -> preset, rows and the recorded command line; errors a user can cause."""

from __future__ import annotations

import pytest

import research.repro as repro
from llm2clip_cli.main import main
from research.repro_config import QUICK, ReproCfg


@pytest.fixture
def seen(monkeypatch):
    calls = {}

    def fake_run(out, cfg, rows, command=None, select=False):
        calls.update(out=out, cfg=cfg, rows=rows, command=command, select=select)
        return {"rows": {"llm_cc": {"eval": {"t2i_r1": 0.25, "i2t_r1": 0.5}}}}

    monkeypatch.setattr(repro, "run_repro", fake_run)
    return calls


def test_cli_passes_seeds_and_steps_and_records_them(seen, tmp_path, capsys):
    assert main(["repro", "--out", str(tmp_path), "--rows", "llm_cc", "--seeds", "3", "--stage1-steps", "160"]) == 0
    assert seen["cfg"].seeds == 3 and seen["rows"] == ("llm_cc",) and not seen["select"]
    assert seen["cfg"].stage1_steps == seen["cfg"].llm_cc_steps == 160  # the preset's llm_cc and the controls
    assert seen["command"] == "llm2clip repro --out DIR --rows llm_cc --stage1-steps 160 --seeds 3"
    assert capsys.readouterr().out == (f'{{"report": "{tmp_path / "report.md"}", '
                                       '"rows": {"llm_cc": {"t2i_r1": 0.25, "i2t_r1": 0.5}}}\n')
    # the preset: one seed, the paper's table, llm_cc not chosen by the run
    assert main(["repro", "--out", str(tmp_path), "--rows", "llm_cc"]) == 0
    assert seen["cfg"] == ReproCfg() and seen["cfg"].seeds == 1
    assert seen["command"] == "llm2clip repro --out DIR --rows llm_cc"
    assert main(["repro", "--out", str(tmp_path)]) == 0
    assert seen["cfg"] == ReproCfg() and seen["command"] == "llm2clip repro --out DIR" and not seen["select"]
    assert seen["rows"] == ("clip77", "minilm77", "minilm", "llm_nocc", "llm_cc")


def test_select_and_all_rows_give_the_full_protocol(seen, tmp_path):
    assert main(["repro", "--out", str(tmp_path), "--select", "--rows", "all"]) == 0
    assert seen["select"] and seen["command"] == "llm2clip repro --out DIR --select --rows all"
    assert seen["rows"] == ("clip77", "minilm77", "minilm", "llm_nocc", "llm_cc", "llm_cc:hardneg", "llm_cc:longpos",
                            "llm_cc:paper", "llm_cc:mntp", "llm_cc:hardneg_words", "llm_cc:hardneg_alt")


def test_the_stage1_recipe_is_a_row_not_a_flag(seen, tmp_path, capsys):
    # the recipe flags of before: llm_cc's recipe is chosen on val now, and each recipe is its own row
    with pytest.raises(SystemExit) as exc:
        main(["repro", "--out", str(tmp_path), "--stage1-positives", "all"])
    assert exc.value.code == 2 and seen == {}
    assert main(["repro", "--out", str(tmp_path), "--rows", "llm_cc:paper,minilm77"]) == 0
    assert seen["rows"] == ("llm_cc:paper", "minilm77")


def test_quick_and_overrides_are_recorded_in_flag_order(seen, tmp_path):
    assert main(["repro", "--seed", "3", "--epochs", "2", "--quick", "--out", str(tmp_path),
                 "--train-scenes", "40", "--rows", "minilm, clip77"]) == 0
    assert (seen["cfg"].seed, seen["cfg"].epochs, seen["cfg"].train_scenes) == (3, 2, 40)
    assert seen["cfg"].image_size == QUICK.image_size and seen["rows"] == ("minilm", "clip77")  # the quick preset
    assert seen["command"] == ("llm2clip repro --out DIR --quick --rows minilm, clip77 --train-scenes 40 --epochs 2 "
                               "--seed 3")


@pytest.mark.parametrize("flag", ["--epochs", "--train-scenes", "--stage1-steps", "--seeds"])
def test_counts_must_be_positive(seen, tmp_path, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["repro", "--out", str(tmp_path), flag, "0"])
    assert exc.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    assert seen == {}


def test_unknown_rows_are_a_user_error(tmp_path, capsys):
    assert main(["repro", "--out", str(tmp_path), "--rows", "llm_cc,clip78"]) == 2
    err = capsys.readouterr().err
    assert err == ("llm2clip: error: unknown rows ['clip78']: choose among clip77, minilm77, minilm, llm_nocc, "
                   "llm_cc, llm_cc:hardneg, llm_cc:longpos, llm_cc:paper, llm_cc:mntp, llm_cc:hardneg_words, "
                   "llm_cc:hardneg_alt (or all)\n")
    assert not (tmp_path / "data").exists()  # rejected before any scene is generated


def test_a_preset_llm_cc_recipe_that_does_not_exist_is_refused_before_any_work(tmp_path):
    from dataclasses import replace

    from llm2clip.errors import LLM2CLIPError

    with pytest.raises(LLM2CLIPError, match="'longneg' is not one of hardneg, longpos, paper, mntp"):
        repro.run_repro(tmp_path, replace(QUICK, llm_cc_recipe="longneg"), ("minilm", "llm_cc"))
    assert not (tmp_path / "data").exists()
