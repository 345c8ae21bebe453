"""The reproduction's report, rendered from a made-up report: tables, differences, sections, portable paths."""

from __future__ import annotations

import json

import pytest

from research.report import _bars, portable, render_markdown, write_report


def _eval(r1: float, twin: dict | None) -> dict:
    return {"t2i_r1": r1, "t2i_r5": 0.5, "t2i_r10": 0.75, "i2t_r1": r1 / 2, "i2t_r5": 0.5, "i2t_r10": 1.0,
            "short": {"t2i_r1": 0.125, "i2t_r1": 0.0}, "near_twin": twin, "dataset": "DIR/data/test"}


@pytest.fixture
def report() -> dict:
    twin = {"long": {"t2i": 0.75, "i2t": 0.5},
            "long_by": {"attribute": {"size": {"t2i": 0.5, "i2t": 0.75, "n_pairs": 4}}}}
    probe = {"named_in_short": 0.9, "long_only": 0.6, "by_group": {"class": 0.95, "cell": 0.55},
             "bound": 0.52, "bound_by_group": {"size": 0.5}}
    return {"command": "llm2clip repro --out DIR --quick", "config": {"seed": 0, "epochs": 1},
            "rows": {"clip77": {"eval": _eval(0.25, None), "seconds": 3.5, "text_twins": None, "fact_probe": None},
                     "llm_cc": {"eval": _eval(0.5, twin), "seconds": 7.0, "fact_probe": probe,
                                "text_twins": {"accuracy": 0.625, "early": {"accuracy": 0.5},
                                               "by_attribute": {"size": {"accuracy": 1.0}}},
                                "folder": "llm_cc-hardneg-2",
                                "stage1": [{"seconds": 12.5, "val": {"before": {"caption_retrieval": 0.25}, "after": {}},
                                            "contrastive": {"first_loss": 2.0, "last_loss": 1.5, "steps": 2,
                                                            "samples_s": 0.1}}]}},
            "caption_retrieval": {"llm_cc": {"long_to_short": 0.5, "short_to_long": 0.25, "caption_retrieval": 0.375}},
            "text_twins": {"llm_cc": {"accuracy": 0.5}},
            "stage2_throughput": {"precomputed": 40.0, "online": 10.0, "speedup": 4.0}, "seconds": 30.0}


def test_tables_carry_each_rows_numbers(report):
    lines = render_markdown(report).split("\n")
    assert lines[:3] == ["# LLM2CLIP reproduction on the scene corpus", "", "Command: `llm2clip repro --out DIR --quick`"]
    assert 'Config: `{"epochs": 1, "seed": 0}`' in lines
    assert "| llm_cc | 0.500 | 0.500 | 0.750 | 0.250 | 0.500 | 1.000 | 0.125 | 0.000 | 0.750 | 0.500 | - |" in lines
    assert "| clip77 | 0.250 | 0.500 | 0.750 | 0.125 | 0.500 | 1.000 | 0.125 | 0.000 | - | - | - |" in lines
    assert "| row | size |" in lines
    assert "| llm_cc | 0.500 / 0.750 (4) |" in lines and "| clip77 | n/a |" in lines
    assert "| llm_cc (raw) | 0.500 | n/a | n/a | n/a |" in lines
    assert "| llm_cc (row's bundle) | 0.625 | 0.500 | n/a | 1.000 |" in lines
    assert "| clip77 (row's bundle) | n/a | n/a | n/a | n/a |" in lines
    assert "| llm_cc | 0.900 | 0.600 | 0.950 | - | - | - | 0.550 | - | - |" in lines
    assert "| llm_cc | 0.520 | - | - | 0.500 | - |" in lines
    assert "| llm_cc | 0.500 | 0.250 | 0.375 |" in lines


def test_llm_cc_minus_each_row(report):
    lines = render_markdown(report).split("\n")
    assert "| metric | vs clip77 |" in lines
    assert "| long t2i R@1 | +0.250 |" in lines and "| long i2t R@1 | +0.125 |" in lines
    assert "| short t2i R@1 | +0.000 |" in lines
    assert "| twin t2i (long) | n/a |" in lines  # clip77 has no near-twin numbers here
    del report["rows"]["llm_cc"]
    assert "## llm_cc minus each row" not in render_markdown(report)


def test_stage1_throughput_and_time(report):
    md = render_markdown(report)
    assert "| llm_cc | 2 | 0.250 | - | 2.000 | 1.500 | 0.100 | 12.500 |" in md
    assert "Precomputed caption embeddings: 40.0 samples/s; LLM run online: 10.0 samples/s (4.0x)." in md
    assert md.endswith("| clip77: embeddings, stage 2, export, eval | 3.5 |\n| llm_cc: stage 1 | 12.5 |\n"
                       "| llm_cc: embeddings, stage 2, export, eval | 7.0 |\n"
                       "| this invocation (a rerun reuses every cached step) | 30.0 |\n")
    # seeds recorded before stage 1 was timed apart count it in this line too: the line says so
    report["rows"]["llm_cc"]["stage1_in_seconds"] = True
    assert "| llm_cc: embeddings, stage 2, export, eval (and stage 1, in seeds recorded before it was timed " \
           "apart) | 7.0 |" in render_markdown(report)
    report["rows"]["llm_cc"]["stage1"] = None
    report.update(stage2_throughput=None, command=None)
    md = render_markdown(report)
    assert "## Stage 1" not in md and ": stage 1 |" not in md and "## Stage-2 throughput" not in md
    assert "Command:" not in md


def test_rows_show_mean_and_sd_over_seeds(report):
    llm = report["rows"]["llm_cc"]
    llm["seeds"] = [{"eval": _eval(0.25, None)}, {"eval": _eval(0.75, None)}]
    llm["chosen"] = "llm_cc:hardneg (2 steps)"
    report["config"]["seeds"] = 2
    lines = render_markdown(report).split("\n")
    assert ("| llm_cc (= llm_cc:hardneg (2 steps)) | 0.500 ± 0.354 | 0.500 ± 0.000 | 0.750 ± 0.000 | 0.250 ± 0.177 "
            "| 0.500 ± 0.000 | 1.000 ± 0.000 | 0.125 ± 0.000 | 0.000 ± 0.000 | - | - | - |") in lines
    assert any("Mean ± sd over 2 training seed(s)" in line for line in lines)


def test_the_selection_section_lists_each_choice_its_candidates_and_split(report):
    cand = {"seeds": 2, "t2i_r1": {"per_seed": [0.25, 0.5]}, "twin_t2i": {"per_seed": [0.5, 0.5]}}
    report["selection"] = {"protocol": "every choice on the val split", "fixed": {"stage 2": "the preset's"},
                           "choices": [{"choice": "llm_cc: stage-1 recipe", "split": "val", "dataset": "DIR/data/val",
                                        "rule": "highest val R@1", "chosen": "llm_cc:paper",
                                        "candidates": {"llm_cc:hardneg": cand, "llm_cc:paper": cand}}]}
    lines = render_markdown(report).split("\n")
    assert "## Choices and the split each was made on" in lines
    assert ("**llm_cc: stage-1 recipe**: chosen `llm_cc:paper` on the **val** split (`DIR/data/val`). "
            "Rule: highest val R@1.") in lines
    assert "| llm_cc:paper (chosen) | 0.375 ± 0.177 | 0.500 ± 0.000 | 2 |" in lines
    assert "| llm_cc:hardneg | 0.375 ± 0.177 | 0.500 ± 0.000 | 2 |" in lines
    assert "| stage 2 | the preset's |" in lines and "Protocol: every choice on the val split." in lines
    assert not any(line.startswith("No choice was made") for line in lines)
    assert not any("existed before this choice" in line for line in lines)
    report["selection"]["choices"][0]["test_scored_before"] = ["llm_cc:hardneg"]
    said = [line for line in render_markdown(report).split("\n") if "existed before this choice" in line]
    assert len(said) == 1 and said[0].startswith("Test scores of `llm_cc:hardneg` existed") and "val" in said[0]
    report["selection"]["choices"] = []
    assert any(line.startswith("No choice was made") for line in render_markdown(report).split("\n"))
    del report["selection"]
    assert "## Choices" not in render_markdown(report)


def test_sections_without_data_are_left_out(report):
    for r in report["rows"].values():
        r.update(fact_probe=None, text_twins=None)
    report["text_twins"] = {}
    md = render_markdown(report)
    assert "## Scene facts kept" not in md and "## Near twins, text side only" not in md
    report["rows"]["llm_cc"]["fact_probe"] = {"named_in_short": 0.9, "long_only": 0.6, "by_group": {}, "bound": None}
    md = render_markdown(report)
    assert "## Scene facts kept" in md and "Bound facts" not in md


def test_portable_keeps_no_machine_path(tmp_path):
    out = tmp_path / "run"
    obj = {"a": str(out / "llm_cc" / "bundle"), "b": ["/somewhere/else/minilm", "relative/x", 3],
           "c": {"d": str(out)}}
    assert portable(obj, out) == {"a": "DIR/llm_cc/bundle", "b": ["minilm", "relative/x", 3], "c": {"d": "DIR"}}


def test_write_report_writes_the_three_files(report, tmp_path):
    from PIL import Image

    report["rows"]["llm_cc"]["eval"]["dataset"] = str(tmp_path / "data" / "test")
    written = write_report(report, tmp_path)
    assert written["rows"]["llm_cc"]["eval"]["dataset"] == "DIR/data/test"
    assert json.loads((tmp_path / "report.json").read_text()) == written
    assert (tmp_path / "report.md").read_text() == render_markdown(written)
    with Image.open(tmp_path / "report.png") as png:
        assert png.format == "PNG" and png.size == (1540, 462)  # 14 x 4.2 inches at 110 dpi


def test_plot_bars_come_from_the_seeds_and_fall_back_to_the_eval(report):
    row = report["rows"]["llm_cc"]
    assert _bars(row, "own", "t2i") == (0.5, 0.0)  # one run, no per-seed styles: the eval's R@1, no error bar
    assert _bars(row, "unseen", "t2i") is None  # no unseen-style scores: no bar
    row["styles"] = {"own t2i": [0.25, 0.75], "unseen t2i": [0.125], "own i2t": [0.5, 0.5, 0.5]}
    assert _bars(row, "own", "t2i") == pytest.approx((0.5, 0.3535534))  # sample sd over seeds
    assert _bars(row, "unseen", "t2i") == (0.125, 0.0)
    assert _bars(row, "own", "i2t") == (0.5, 0.0)
