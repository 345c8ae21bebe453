"""`llm2clip repro --quick`: the real pipeline of every row on tiny data; each row's bundle indexes and serves."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from fastapi.testclient import TestClient

from llm2clip.data import read_dataset
from llm2clip_cli.main import main as cli
from research.fact_probe import probe_caption_embeddings
from research.repro_config import QUICK, ROWS
from training.embed import CaptionEmbeddings
from training.eval import twin_pairs

# every row trained, exported and evaluated with the real default models: minutes
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    assert cli(["repro", "--out", str(out), "--quick"]) == 0
    return out


def test_every_row_is_scored_on_the_test_split(repro):
    report = json.loads((repro / "report.json").read_text())
    n, pairs = QUICK.test_scenes, len(twin_pairs(read_dataset(repro / "data" / "test")))
    assert set(report["rows"]) == set(ROWS) and pairs == QUICK.test_scenes  # each scene has its twin
    for row in ROWS:
        ev = report["rows"][row]["eval"]
        assert ev["n"] == n and ev["dataset"] == "DIR/data/test"
        for direction in ("t2i", "i2t"):
            recalls = [ev[f"{direction}_r{k}"] for k in (1, 5, 10)]
            assert recalls == sorted(recalls) and all((r * n).is_integer() for r in recalls)
            assert (ev["short"][f"{direction}_r1"] * n).is_integer()
        assert ev["near_twin"]["n_pairs"] == pairs and (ev["near_twin"]["long"]["t2i"] * pairs).is_integer()
        twins = report["rows"][row]["text_twins"]  # through the row's exported text side
        assert twins["n_pairs"] == pairs and twins["early"]["n_pairs"] + twins["late"]["n_pairs"] == pairs
    assert set(report["caption_retrieval"]) == {"llm_nocc", "minilm", "llm_cc"}
    assert {k: v["n_pairs"] for k, v in report["text_twins"].items()} == dict.fromkeys(report["caption_retrieval"], pairs)
    t = report["stage2_throughput"]
    assert t["speedup"] == pytest.approx(t["precomputed"] / t["online"], rel=0.05)


def test_report_records_the_run_without_machine_paths(repro):
    text = (repro / "report.json").read_text()
    report = json.loads(text)
    assert report["command"] == "llm2clip repro --out DIR --quick" and report["config"] == asdict(QUICK)
    assert str(repro) not in text  # no machine paths: it gets committed
    assert report["stage1"]["contrastive"]["steps"] == QUICK.stage1_steps
    md = (repro / "report.md").read_text()
    assert all(f"| {row} |" in md for row in ROWS)
    assert "Command: `llm2clip repro --out DIR --quick`" in md
    assert "vs clip77 | vs minilm | vs llm_nocc |" in md and "| llm_cc (row's bundle) |" in md
    assert "| stage 1 |" in md and "Caption retrieval on the val split" in md
    from PIL import Image

    with Image.open(repro / "report.png") as png:
        assert png.format == "PNG" and png.size == (1430, 418)


def test_fact_probe_of_each_frozen_text_side(repro):
    report = json.loads((repro / "report.json").read_text())
    # clip77's text side is trained jointly: nothing frozen to probe
    assert report["rows"]["clip77"]["fact_probe"] is None
    train = read_dataset(repro / "data" / "train")
    for row in ("minilm", "llm_nocc", "llm_cc"):
        probe = report["rows"][row]["fact_probe"]
        assert probe == probe_caption_embeddings(CaptionEmbeddings(repro / "embeddings" / row), train)
        assert probe["train_scenes"] + probe["test_scenes"] == QUICK.train_scenes


def test_bundles_read_the_rows_context(repro):
    # the 77-token row's bundle cuts captions at 77 tokens; the LLM rows read 512
    manifests = {row: json.loads((repro / row / "bundle" / "manifest.json").read_text()) for row in ROWS}
    assert manifests["clip77"]["text"]["max_tokens"] == 77
    assert manifests["llm_cc"]["text"]["max_tokens"] == 512
    assert manifests["minilm"]["text"]["add_special_tokens"] is True
    assert (repro / "llm_cc" / "ckpt" / "curves.png").is_file()


def test_stage1_changed_the_text_encoder(repro):
    summary = json.loads((repro / "stage1" / "stage1.json").read_text())
    assert summary["recipe"]["steps"] == QUICK.stage1_steps and summary["recipe"]["positives"] == "long"
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
    captions = {it.long for it in read_dataset(data).items}
    with TestClient(create_app(settings)) as client:
        r = client.post("/search", json={"text": "two items: a bag and a coat, on a plain red background", "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        png = next((data / "images").iterdir()).read_bytes()
        r = client.post("/search", files={"image": ("x.png", png, "image/png")}, data={"k": "2"})
        assert r.status_code == 200 and r.json()["results"][0]["caption"] in captions
