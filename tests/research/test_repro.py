"""`llm2clip repro --quick`: the real pipeline of every row and seed on tiny data; choices on val, scores on test;
each row's bundle indexes and serves."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llm2clip.data import read_dataset
from llm2clip_cli.main import main as cli
from research.fact_probe import probe_caption_embeddings
from research.repro_config import CC_ROWS, QUICK, ROWS, STAGE1_VARIANTS
from research.repro_rows import STAGE1_TIMED_APART, STAGE2_SUMMARY, Candidate
from research.repro_scoring import BUNDLE_SCORING, FROZEN_SCORING
from training.embed import CaptionEmbeddings
from training.eval import twin_pairs

# every row trained twice (two seeds), exported and evaluated with the real default models: many minutes
pytestmark = pytest.mark.slow
SEEDS = 2


def _cand(variant: str, steps: int) -> Candidate:
    """A stage-1 candidate of the quick preset: its folders are named by its recipe, steps and LoRA layers."""
    return Candidate(variant, steps, QUICK.stage1_lora_layers)


def _snapshot(out: Path) -> dict[str, str]:
    """What a rerun must not redo: each seed-0 run's recorded time and stage-1 summary."""
    files = [*out.glob("*/seed-0/seconds.json"), *out.glob("stage1/*/seed-0/stage1.json")]
    return {str(p.relative_to(out)): p.read_text() for p in files}


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    # one row and seed first, then every row with two seeds: the second run reuses the seed-0 folder it finds
    # (a first run of every row would double the test's time; stage 1's own resume is tested in tests/training)
    assert cli(["repro", "--out", str(out), "--quick", "--rows", "clip77"]) == 0
    assert list(out.glob("clip77/seed-0")) and not list(out.glob("*/seed-1"))
    first = _snapshot(out)
    assert first
    assert cli(["repro", "--out", str(out), "--quick", "--select", "--rows", "all", "--seeds", str(SEEDS)]) == 0
    # runs that existed are untouched; with two seeds the choices may differ, so new seed-0 runs may appear
    second = _snapshot(out)
    assert {k: second.get(k) for k in first} == first
    yield out
    # some 15 GB of bundles, checkpoints and stage-1 models: pytest keeps its last three temporary folders
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def report(repro):
    return json.loads((repro / "report.json").read_text())


def test_every_row_and_seed_is_scored_on_the_test_split(repro, report):
    n, pairs = QUICK.test_scenes, len(twin_pairs(read_dataset(repro / "data" / "test")))
    assert set(report["rows"]) == set(ROWS) and pairs == QUICK.test_scenes  # each scene has its twin
    for row in ROWS:
        seeds = report["rows"][row]["seeds"]
        assert [s["seed"] for s in seeds] == [QUICK.seed + k for k in range(SEEDS)]
        for ev in (s["eval"] for s in seeds):
            assert ev["n"] == n and ev["dataset"] == "DIR/data/test"
            recalls = [ev[f"t2i_r{k}"] for k in (1, 5, 10)]
            assert recalls == sorted(recalls) and all((r * n).is_integer() for r in recalls)
            assert ev["near_twin"]["n_pairs"] == pairs
            # clip77 through its bundle; a frozen encoder's row from its bf16 vectors through the adapter
            assert ev["scoring"] == (BUNDLE_SCORING if row == "clip77" else FROZEN_SCORING)
        mean = report["rows"][row]["eval"]["t2i_r1"]
        assert mean == pytest.approx(sum(s["eval"]["t2i_r1"] for s in seeds) / SEEDS)
        twins = report["rows"][row]["text_twins"]  # through the row's exported text side
        assert twins["n_pairs"] == pairs
    # the raw encoders: the pretrained ones and llm_cc's (the controls' text side is in their rows)
    assert set(report["caption_retrieval"]) == {"minilm77", "minilm", "llm_nocc", "llm_cc"} == set(report["text_twins"])
    t = report["stage2_throughput"]
    assert t["speedup"] == pytest.approx(t["precomputed"] / t["online"], rel=0.05)


def test_choices_are_made_on_val_and_only_final_rows_are_scored_on_test(repro, report):
    selection = json.loads((repro / "selection.json").read_text())
    assert report["selection"] == selection
    recipe, steps = selection["choices"]
    # selection.json is written with sorted keys: the candidates, not their order
    assert sorted(recipe["candidates"]) == sorted(CC_ROWS) and recipe["chosen"] in CC_ROWS
    assert list(steps["candidates"]) == ["1 steps", "2 steps"]  # the probe and the preset's count
    for choice in (recipe, steps):
        assert choice["split"] == "val" and choice["dataset"] == "DIR/data/val"
        assert all(c["seeds"] == SEEDS for c in choice["candidates"].values())
    variant = recipe["chosen"].removeprefix("llm_cc:")
    chosen_key = _cand(variant, int(steps["chosen"].split()[0])).key
    assert report["rows"]["llm_cc"]["folder"] == chosen_key
    # every candidate and seed scored on val; test only for the rows of the report
    val_scored = {p.parent.parent.name for p in repro.glob("*/seed-*/val.json")}
    assert val_scored == {_cand(v, 2).key for v in STAGE1_VARIANTS} | {_cand(variant, 1).key}
    assert all(Path(json.loads(p.read_text())["dataset"]) == repro / "data" / "val"
               for p in repro.glob("*/seed-*/val.json"))
    test_scored = {p.parent.parent.name for p in repro.glob("*/seed-*/eval.json")}
    assert test_scored == {r["folder"] for r in report["rows"].values()}
    md = (repro / "report.md").read_text()
    assert "## Choices and the split each was made on" in md and f"| {recipe['chosen']} (chosen) |" in md
    assert f"| llm_cc (= {report['rows']['llm_cc']['chosen']}) |" in md


def test_every_row_is_scored_on_unseen_phrasing_and_rows_are_tested_in_pairs(repro, report):
    test, unseen = read_dataset(repro / "data" / "test"), read_dataset(repro / "data" / "test-unseen")
    assert [it.id for it in test] == [it.id for it in unseen] and all(
        a.long != b.long for a, b in zip(test, unseen, strict=True))
    for row in ROWS:
        r = report["rows"][row]
        # the own style's R@1 from the per-query outcomes is eval.json's, seed by seed
        assert r["styles"]["own t2i"] == [s["eval"]["t2i_r1"] for s in r["seeds"]]
        assert r["styles"]["unseen t2i"] == [s["unseen_eval"]["t2i_r1"] for s in r["seeds"]]
        assert all(s["unseen_eval"]["dataset"] == "DIR/data/test-unseen" for s in r["seeds"])
        assert len(r["styles"]["drop t2i"]) == SEEDS
    tests = report["paired_tests"]
    comps = set(tests["comparisons"])
    assert {"llm_cc-clip77", "llm_cc-minilm77", "llm_cc-llm_nocc", "llm_nocc-minilm77"} <= comps
    same = {f"llm_cc-{n}" for n in CC_ROWS if report["rows"][n]["folder"] == report["rows"]["llm_cc"]["folder"]}
    # llm_cc is never tested against a control that is the same run; when --select picks the step probe (val
    # scores differ by CPU), no control is the same run and llm_cc is tested against every one
    assert len(same) <= 1 and not same & comps
    assert same or {f"llm_cc-{n}" for n in CC_ROWS} <= comps
    assert tests["family"] == sum(len(m) for m in tests["comparisons"].values())
    md = (repro / "report.md").read_text()
    assert "## Own-style and unseen-style captions (test split)" in md and "## Paired tests between rows" in md


def test_report_records_the_run_without_machine_paths(repro, report):
    text = (repro / "report.json").read_text()
    assert report["command"] == "llm2clip repro --out DIR --quick --select --rows all --seeds 2"
    assert report["config"] == json.loads(json.dumps(asdict(replace(QUICK, seeds=SEEDS))))
    assert str(repro) not in text and str(repro) not in (repro / "selection.json").read_text()
    md = (repro / "report.md").read_text()
    assert all(f"| {row} |" in md or f"| {row} (= " in md for row in ROWS)
    assert " ± " in md and "Mean ± sd over 2 training seed(s)" in md
    assert "| llm_cc:mntp: stage 1 |" in md and "## Stage 1" in md
    from PIL import Image

    with Image.open(repro / "report.png") as png:
        assert png.format == "PNG" and png.size == (1540, 462)  # 14 x 4.2 inches at 110 dpi


def test_stage1_runs_follow_their_recipes(repro, report):
    for v, recipe in STAGE1_VARIANTS.items():
        for k in range(SEEDS):
            summary = json.loads((repro / "stage1" / _cand(v, 2).folder / f"seed-{k}" / "stage1.json").read_text())
            r = summary["recipe"]
            assert (r["steps"], r["seed"], r["positives"], r["hard_negatives"]) == (
                QUICK.stage1_steps, QUICK.seed + k, recipe["positives"], recipe["hard_negatives"])
            assert r["mntp_steps"] == (QUICK.stage1_mntp_steps if recipe["mntp"] else 0)
            assert r["lora_layers"] == QUICK.stage1_lora_layers
            assert summary["val"]["dataset"].endswith("data/val")
            # stage 2's clock starts after stage 1: its seconds are not counted twice in the report's time
            stage2 = json.loads((repro / _cand(v, 2).key / f"seed-{k}" / STAGE2_SUMMARY).read_text())
            assert stage2[STAGE1_TIMED_APART] is True
    assert not any(r["stage1_in_seconds"] for r in report["rows"].values())
    assert "in seeds recorded before it was timed apart" not in (repro / "report.md").read_text()
    nocc, cc = report["caption_retrieval"]["llm_nocc"], report["caption_retrieval"]["llm_cc"]
    assert nocc["text_encoder"]["fingerprint"] != cc["text_encoder"]["fingerprint"]


def test_smollm2s_layers_below_the_lora_run_once_per_caption_for_the_base_and_every_stage1_model(repro, report):
    manifests = {str(p.parent.relative_to(repro)): json.loads(p.read_text())
                 for p in repro.glob("embeddings/**/manifest.json")}
    shared = {k: m["prefix_states"] for k, m in manifests.items() if "prefix_states" in m}
    # llm_nocc's base and every stage-1 model of every recipe and seed (LoRA on the top layers only)
    assert set(shared) == {k for k in manifests if "minilm" not in k} and len(shared) >= 1 + len(STAGE1_VARIANTS)
    layers = 30 - QUICK.stage1_lora_layers
    count = next(iter(manifests.values()))["count"]
    firsts = [k for k, s in shared.items() if s["stored"]]
    assert len(firsts) == 1 and shared[firsts[0]] == {"layers": layers, "reused": 0, "stored": count}
    assert all(s == {"layers": layers, "reused": count, "stored": 0} for k, s in shared.items() if k != firsts[0])
    (prefix,) = (repro / "prefix_states").iterdir()  # one prefix: the base's bottom layers
    assert json.loads((prefix / "prefix.json").read_text())["layers"] == layers


def test_every_row_trains_the_presets_tower_from_one_shared_token_cache(repro, report):
    from research.repro_config import vision_cfg

    want = asdict(vision_cfg(QUICK))
    folders = {p.parent.parent.parent for p in repro.glob("*/seed-*/ckpt/config.json")}
    assert {r["folder"] for r in report["rows"].values()} <= {f.name for f in folders}
    for cfg in repro.glob("*/seed-*/ckpt/config.json"):  # rows and val candidates, every seed
        assert json.loads(cfg.read_text())["vision"] == want, cfg
    # the locked prefix's tokens of the train images, computed once for every row, seed and candidate
    assert QUICK.trainable_blocks == 0 and len(list((repro / "token_cache").glob("tokens-*.npy"))) == 1
    assert not list(repro.glob("*/seed-*/ckpt/token_cache"))


def test_minilm77_cuts_at_77_tokens_in_training_and_serving(repro, report):
    manifests = {row: json.loads((repro / report["rows"][row]["folder"] / "seed-0" / "bundle" / "manifest.json")
                                 .read_text()) for row in ("clip77", "minilm77", "minilm", "llm_cc")}
    assert manifests["clip77"]["text"]["max_tokens"] == 77 and manifests["minilm77"]["text"]["max_tokens"] == 77
    assert manifests["minilm"]["text"]["max_tokens"] == 512 and manifests["llm_cc"]["text"]["max_tokens"] == 512
    assert manifests["minilm77"]["text"]["add_special_tokens"] is True
    emb = json.loads((repro / "embeddings" / "minilm77" / "manifest.json").read_text())
    assert emb["max_tokens"] == 77 and report["caption_retrieval"]["minilm77"]["max_tokens"] == 77
    assert report["caption_retrieval"]["minilm"]["max_tokens"] == 512


def test_fact_probe_of_each_frozen_text_side(repro, report):
    assert report["rows"]["clip77"]["fact_probe"] is None  # trained jointly: nothing frozen to probe
    train = read_dataset(repro / "data" / "train")
    probe = report["rows"]["minilm77"]["seeds"][1]["fact_probe"]
    assert probe == probe_caption_embeddings(CaptionEmbeddings(repro / "embeddings" / "minilm77"), train)
    cc = report["rows"]["llm_cc:paper"]["seeds"][1]["fact_probe"]
    assert cc == probe_caption_embeddings(CaptionEmbeddings(repro / "embeddings" / _cand("paper", 2).key / "seed-1"), train)


@pytest.mark.parametrize("row", ["clip77", "minilm77", "llm_cc"])
def test_row_bundles_index_and_serve(repro, report, row, tmp_path):
    from service.app import create_app
    from service.settings import Settings

    bundle, data = repro / report["rows"][row]["folder"] / "seed-1" / "bundle", repro / "data" / "test"
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


def test_without_select_llm_cc_is_the_presets_and_the_report_says_where_it_comes_from(repro, tmp_path):
    from research.repro import run_repro
    from research.repro_config import LLM_CC_SOURCE

    # the preset's llm_cc (hardneg, 2 steps) is one of the candidates above: its folders are linked, not retrained
    cand = _cand(QUICK.llm_cc_recipe, QUICK.llm_cc_steps)
    out, key = tmp_path / "fixed", cand.key
    for part in ("data", "token_cache", f"stage1/{cand.folder}", f"embeddings/{key}",
                 *(f"{key}/seed-{k}" for k in range(SEEDS))):
        shutil.copytree(repro / part, out / part, copy_function=os.link)
    for scores in out.glob(f"{key}/seed-*/*.json"):  # stage 2 and its bundle stay, the scores go
        if scores.name != "stage2.json":
            scores.unlink()  # a link: the original stays
    report = run_repro(out, replace(QUICK, seeds=SEEDS), ("llm_cc",))
    selection = json.loads((out / "selection.json").read_text())
    assert selection["choices"] == [] and report["selection"] == selection
    label = cand.label
    assert selection["fixed"][f"llm_cc = {label}"] == LLM_CC_SOURCE
    assert report["rows"]["llm_cc"]["folder"] == key and report["rows"]["llm_cc"]["chosen"] == label
    # nothing chosen; the row's val scores are kept for a later --select run (research.repro_records), on val only
    assert [json.loads(p.read_text())["dataset"] for p in sorted(out.glob("*/seed-*/val.json"))] == [
        str(out / "data" / "val")] * SEEDS
    for k in range(SEEDS):  # and nothing retrained: stage 2's record is the candidate's
        assert (out / key / f"seed-{k}" / "stage2.json").read_text() == (
            repro / key / f"seed-{k}" / "stage2.json").read_text()
    md = (out / "report.md").read_text()
    assert f"| llm_cc = {label} | {LLM_CC_SOURCE} |" in md


def test_adapter_probe_trains_a_rows_stage2_again_with_another_adapter(repro, report, tmp_path):
    """research.adapter_probe: the row's own embeddings, seed, preset and token cache; only the adapter differs."""
    from research import adapter_probe
    from training.checkpoint import load_state

    caches = sorted((repro / "token_cache").glob("tokens-*.npy"))
    out = tmp_path / "probe"
    adapter_probe.main(["--repro", str(repro), "--row", "llm_nocc", "--out", str(out), "--adapter-blocks", "0",
                        "--text-geometry", "1"])
    assert (out / "bundle" / "manifest.json").is_file()
    config = json.loads((out / "ckpt" / "config.json").read_text())
    own = json.loads((repro / "llm_nocc" / "seed-0" / "ckpt" / "config.json").read_text())
    assert config["adapter"]["blocks"] == 0 and own["adapter"]["blocks"] > 0
    assert config["vision"] == own["vision"]
    state = load_state(out / "ckpt")
    assert state["train_cfg"]["text_geometry"] == 1.0 and state["train_cfg"]["seed"] == QUICK.seed
    assert state["step"] == json.loads((repro / "llm_nocc" / "seed-0" / "stage2.json").read_text())["steps"]
    assert sorted((repro / "token_cache").glob("tokens-*.npy")) == caches  # read, not made again
    with pytest.raises(SystemExit, match="no adapter"):
        adapter_probe.main(["--repro", str(repro), "--row", "clip77", "--out", str(tmp_path / "x")])


def test_adapter_probe_can_train_the_top_backbone_block_at_its_own_rate(repro, report, tmp_path):
    """--trainable-blocks/--backbone-lr/--epochs: the oracle's best tower (a trained top block) on a real row; the
    locked blocks below it stay the row's, the trained one moves."""
    import torch
    from safetensors.torch import load_file

    from research import adapter_probe
    from training.checkpoint import WEIGHTS, load_state

    out = tmp_path / "tower"
    with pytest.raises(SystemExit):  # a backbone rate without a trained block says so
        adapter_probe.main(["--repro", str(repro), "--row", "llm_nocc", "--out", str(out), "--backbone-lr", "1e-4"])
    adapter_probe.main(["--repro", str(repro), "--row", "llm_nocc", "--out", str(out), "--trainable-blocks", "1",
                        "--backbone-lr", "1e-3", "--epochs", "2"])
    config = json.loads((out / "ckpt" / "config.json").read_text())
    own = json.loads((repro / "llm_nocc" / "seed-0" / "ckpt" / "config.json").read_text())
    assert config["vision"]["trainable_blocks"] == 1 and own["vision"]["trainable_blocks"] == 0
    state, row = load_state(out / "ckpt"), load_state(repro / "llm_nocc" / "seed-0" / "ckpt")
    assert state["train_cfg"]["backbone_lr"] == 1e-3 and state["train_cfg"]["epochs"] == 2
    assert state["step"] == 2 * json.loads((repro / "llm_nocc" / "seed-0" / "stage2.json").read_text())["steps"]
    probe = json.loads((out / "probe.json").read_text())
    assert (probe["trainable_blocks"], probe["backbone_lr"], probe["epochs"]) == (1, 1e-3, 2)
    depth = config["vision"]["depth"]
    mine, theirs = load_file(out / "ckpt" / WEIGHTS), load_file(repro / "llm_nocc" / "seed-0" / "ckpt" / WEIGHTS)
    top = [k for k in mine if f"encoder.layer.{depth - 1}." in k and k.endswith("weight")]
    below = [k for k in mine if f"encoder.layer.{depth - 2}." in k and k.endswith("weight")]
    assert top and below and row is not None
    assert any(not torch.equal(mine[k], theirs[k]) for k in top)
    assert all(torch.equal(mine[k], theirs[k]) for k in below)


def test_adapter_probe_trains_a_missing_stage1_row_as_the_repro_would(repro, report, tmp_path):
    """--train-text: a stage-1 row without embeddings gets its stage 1 and train embeddings made as the repro makes
    them (into a copy of the run, so the other tests' run is untouched), then its stage 2; nothing of test is read."""
    from research import adapter_probe
    from research.repro_rows import Candidate, embeddings_dir, stage1_cfg

    run = tmp_path / "run"
    # hard links: a copy of the stage-1 models takes gigabytes; so the probe may add files but never rewrite one
    before = {p: p.stat().st_mtime_ns for p in repro.rglob("*") if p.is_file()}
    shutil.copytree(repro, run, ignore=shutil.ignore_patterns("bundle", "ckpt"), copy_function=os.link)
    (run / "data" / "test").rename(run / "data" / "test-hidden")  # anything that reads test fails
    spec = adapter_probe.spec_of("llm_cc:hardneg_alt", QUICK)
    assert not (embeddings_dir(run, spec, 2) / "manifest.json").exists()
    with pytest.raises(SystemExit, match="--train-text"):
        adapter_probe.main(["--repro", str(run), "--row", "llm_cc:hardneg_alt", "--seed", "2", "--out", str(tmp_path / "x")])
    adapter_probe.main(["--repro", str(run), "--row", "llm_cc:hardneg_alt", "--seed", "2", "--out", str(tmp_path / "p"),
                        "--train-text"])
    assert (embeddings_dir(run, spec, 2) / "manifest.json").is_file() and (tmp_path / "p" / "bundle").is_dir()
    folder = run / "stage1" / spec.stage1.folder / "seed-2"
    summary = json.loads((folder / "stage1.json").read_text())
    want = stage1_cfg(QUICK, Candidate("hardneg_alt", spec.stage1.steps, spec.stage1.lora_layers), QUICK.seed + 2)
    assert summary["recipe"]["alt_views"] == 2 and summary["recipe"]["seed"] == want.seed
    pools = json.loads((folder / "checkpoint" / "captions.json").read_text())
    twins = json.loads((folder / "checkpoint" / "twins.json").read_text())
    assert all(len(p) >= 4 for p in pools) and all(len(t) >= 4 for t in twins)  # 2 own-grammar + 2 alt at least
    assert {p: p.stat().st_mtime_ns for p in repro.rglob("*") if p.is_file()} == before  # the run is untouched
    shutil.rmtree(run)


def test_records_carry_the_whole_protocol_to_a_folder_without_its_models(repro, report, tmp_path):
    """research.repro_records: the run's records packed, then unpacked into an empty folder (as on a machine that
    never trained it): the whole --select protocol runs there from the records alone, trains and scores nothing,
    and reports the same rows, choices and tests."""
    from research import repro_records
    from research.repro import run_repro

    records, fresh = tmp_path / "records", tmp_path / "fresh"
    assert repro_records.main(["pack", str(repro), str(records)]) == 0
    assert not list(records.rglob("*.onnx")) and not list(records.rglob("*.safetensors"))
    repro_records.unpack(records, fresh)
    again = run_repro(fresh, replace(QUICK, seeds=SEEDS), tuple(ROWS), select=True)
    assert not list(fresh.glob("*/seed-*/bundle")) and not list(fresh.glob("stage1/*/seed-*/config.json"))
    assert not (fresh / "embeddings").exists() and not (fresh / "token_cache").exists()
    for key in ("rows", "caption_retrieval", "text_twins", "paired_tests", "stage2_throughput"):
        assert again[key] == report[key], key
    # the same choices; here every recipe's test scores came first (carried in), and the report says so
    first, *_ = again["selection"]["choices"]
    assert first["test_scored_before"] == list(first["candidates"])
    assert all(not c["test_scored_before"] for c in report["selection"]["choices"])
    strip = [{k: v for k, v in c.items() if k != "test_scored_before"} for c in again["selection"]["choices"]]
    assert strip == [{k: v for k, v in c.items() if k != "test_scored_before"} for c in report["selection"]["choices"]]
    assert again["selection"]["fixed"] == report["selection"]["fixed"]
    assert "existed before this choice" in (fresh / "report.md").read_text()
