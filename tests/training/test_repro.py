"""`llm2clip repro --quick`: the real pipeline of every row on tiny data; each row's bundle indexes and serves."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from llm2clip_cli.main import main as cli
from training.repro_cli import ROWS


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    assert cli(["repro", "--out", str(out), "--quick"]) == 0
    return out


def test_report_has_every_row_and_metric(repro):
    report = json.loads((repro / "report.json").read_text())
    assert set(report["rows"]) == set(ROWS)
    for row in ROWS:
        ev = report["rows"][row]["eval"]
        for key in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"):
            assert 0.0 <= ev[key] <= 1.0
        assert ev["near_twin"]["n_pairs"] > 0 and ev["short"]["t2i_r1"] >= 0
    assert set(report["caption_retrieval"]) == {"llm_nocc", "llm_cc", "minilm"}
    assert report["stage2_throughput"]["precomputed"] > 0 and report["stage2_throughput"]["online"] > 0
    assert report["command"] == "llm2clip repro --out DIR --quick"
    assert str(repro) not in (repro / "report.json").read_text()  # no machine paths: it gets committed
    assert report["rows"]["llm_cc"]["eval"]["dataset"] == "DIR/data/test"
    assert report["stage1"]["val"]["after"]["caption_retrieval"] is not None
    assert all(report["rows"][row]["seconds"] > 0 for row in ROWS)
    md = (repro / "report.md").read_text()
    assert all(f"| {row} |" in md for row in ROWS)
    assert "Command: `llm2clip repro --out DIR --quick`" in md
    assert "| twin t2i (long) | " in md and "vs clip77 | vs minilm | vs llm_nocc |" in md
    assert "## Near twins by where the caption first names" in md
    assert "## Near twins, text side only" in md and "| llm_cc (row's bundle) |" in md
    assert 0 <= report["text_twins"]["llm_cc"]["accuracy"] <= 1
    assert 0 <= report["rows"]["clip77"]["text_twins"]["accuracy"] <= 1
    assert "| stage 1 |" in md and "Caption retrieval on the val split" in md
    # the frozen text embeddings' fact probe: every row but clip77 (trained jointly, nothing frozen)
    assert report["rows"]["clip77"]["fact_probe"] is None
    for row in ("minilm", "llm_nocc", "llm_cc"):
        probe = report["rows"][row]["fact_probe"]
        assert probe["train_scenes"] + probe["test_scenes"] == 24 and probe["facts"] > 0
        assert "bound" in probe and "bound_by_group" in probe  # often None at 24 scenes: few strata hold both
    assert "## Scene facts kept by the frozen text embedding" in md and "| llm_cc | " in md
    assert (repro / "report.png").stat().st_size > 0
    # the 77-token row's bundle cuts captions at 77 tokens; the LLM rows read 512
    manifests = {row: json.loads((repro / row / "bundle" / "manifest.json").read_text()) for row in ROWS}
    assert manifests["clip77"]["text"]["max_tokens"] == 77
    assert manifests["llm_cc"]["text"]["max_tokens"] == 512
    assert manifests["minilm"]["text"]["add_special_tokens"] is True
    assert (repro / "llm_cc" / "ckpt" / "curves.png").is_file()


def test_stage1_changed_the_text_encoder(repro):
    summary = json.loads((repro / "stage1" / "stage1.json").read_text())
    assert summary  # recipe and history recorded beside the merged model
    nocc = json.loads((repro / "caption_retrieval" / "llm_nocc.json").read_text())
    cc = json.loads((repro / "caption_retrieval" / "llm_cc.json").read_text())
    assert nocc["text_encoder"]["fingerprint"] != cc["text_encoder"]["fingerprint"]


@pytest.mark.parametrize("row", ROWS)
def test_every_row_bundle_indexes_and_serves(repro, row, tmp_path):
    from service.app import create_app
    from service.settings import Settings

    bundle, data = repro / row / "bundle", repro / "data" / "test"
    assert cli(["index", "build", "--model", str(bundle), "--data", str(data), "--out", str(tmp_path / "idx"),
                "--no-progress"]) == 0
    settings = Settings(model=bundle, image_index=tmp_path / "idx" / "image", text_index=tmp_path / "idx" / "text")
    with TestClient(create_app(settings)) as client:
        r = client.post("/search", json={"text": "two items: a bag and a coat, on a plain red background", "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        png = next((data / "images").iterdir()).read_bytes()
        r = client.post("/search", files={"image": ("x.png", png, "image/png")}, data={"k": "2"})
        assert r.status_code == 200 and r.json()["results"][0]["caption"]


def test_cli_passes_the_stage1_variant_and_records_it(monkeypatch, tmp_path, capsys):
    import training.repro as repro
    from llm2clip_cli.main import main

    seen = {}

    def fake_run(out, cfg, rows, command=None):  # the CLI's part only: flags -> preset and command line
        seen.update(cfg=cfg, rows=rows, command=command)
        return {"rows": {}}

    monkeypatch.setattr(repro, "run_repro", fake_run)
    # the paper's pairs without hard negatives: both away from the preset, both recorded
    assert main(["repro", "--out", str(tmp_path), "--rows", "llm_cc", "--stage1-positives", "all",
                 "--no-stage1-hard-negatives", "--stage1-steps", "160"]) == 0
    assert seen["cfg"].stage1_positives == "all" and seen["cfg"].stage1_hard_negatives is False
    assert seen["cfg"].stage1_steps == 160 and seen["rows"] == ("llm_cc",)
    assert seen["command"] == ("llm2clip repro --out DIR --rows llm_cc --stage1-steps 160 --stage1-positives all "
                               "--no-stage1-hard-negatives")
    # the preset: long positives, hard negatives
    assert main(["repro", "--out", str(tmp_path), "--rows", "llm_cc"]) == 0
    assert seen["cfg"].stage1_positives == "long" and seen["cfg"].stage1_hard_negatives is True
    assert seen["cfg"] == repro.ReproCfg() and seen["command"] == "llm2clip repro --out DIR --rows llm_cc"
    main(["repro", "--out", str(tmp_path)])
    assert seen["cfg"] == repro.ReproCfg() and seen["command"] == "llm2clip repro --out DIR"
