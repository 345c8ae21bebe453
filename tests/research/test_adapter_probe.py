"""research.adapter_probe's refusals, before anything trains (its run is tested on the quick repro, test_repro.py)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from research import adapter_probe
from research.repro_config import QUICK, ReproCfg


def test_the_rows_preset_comes_from_the_report_and_a_missing_run_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="report.json is missing"):
        adapter_probe.main(["--repro", str(tmp_path), "--row", "minilm", "--out", str(tmp_path / "o")])
    (tmp_path / "report.json").write_text(json.dumps({"config": {**asdict(QUICK), "retired_field": 1}}))
    assert adapter_probe.config_of(tmp_path).epochs == QUICK.epochs != ReproCfg().epochs
    with pytest.raises(SystemExit, match="holds no caption embeddings"):
        adapter_probe.main(["--repro", str(tmp_path), "--row", "llm_cc:hardneg", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_rows_map_to_the_repros_folders():
    cfg = ReproCfg()
    assert adapter_probe.spec_of("llm_cc:hardneg_words", cfg).key == "llm_cc-hardneg_words-400-top15"
    assert adapter_probe.spec_of("minilm77", cfg).max_tokens == 77
    with pytest.raises(SystemExit, match="no adapter"):
        adapter_probe.spec_of("clip77", cfg)
    with pytest.raises(SystemExit, match="unknown row 'llm_cc:nope'"):
        adapter_probe.spec_of("llm_cc:nope", cfg)
