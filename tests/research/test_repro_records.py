"""research.repro_records: a run's records travel without its models or this machine's paths, and come back only
into a run of the same scenes. (That `llm2clip repro` then trains nothing recorded: tests/research/test_repro.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm2clip.errors import LLM2CLIPError
from research import repro_records as rr
from research.repro_rows import STAGE2_SUMMARY
from research.repro_styles import STYLES_FILE
from research.selection import VAL_SCORE


def _run(root: Path, items: str = "a\n") -> Path:
    """A run folder as `llm2clip repro` leaves it: data, a frozen row with its bundle, a stage-1 run, probes."""
    for split in ("train", "val"):
        (root / "data" / split).mkdir(parents=True)
        (root / "data" / split / "items.jsonl").write_text(items + split)
    seed = root / "llm_cc-hardneg-400-top15" / "seed-0"
    (seed / "bundle").mkdir(parents=True)
    (seed / "bundle" / "manifest.json").write_text("{}")
    for name in (*rr.ROW_FILES, rr.VAL_FILE):
        (seed / name).write_text(json.dumps({"dataset": str(root / "data" / "val"), "name": name}))
    stage1 = root / "stage1" / "hardneg-400-top15" / "seed-0"
    stage1.mkdir(parents=True)
    (stage1 / "stage1.json").write_text(json.dumps({"seconds": 9.5, "val": {"after": 0.3}, "contrastive": [1.0],
                                                    "mntp": None, "recipe": {"dataset": str(root / "data")}}))
    (stage1 / "model.safetensors").write_bytes(b"weights")
    (root / "caption_retrieval").mkdir()
    (root / "caption_retrieval" / "llm_nocc.json").write_text("0.5")
    (root / "embeddings" / "llm_nocc").mkdir(parents=True)
    (root / "embeddings" / "llm_nocc" / "manifest.json").write_text("{}")
    return root


def test_the_file_names_are_the_ones_the_repro_writes():
    assert STYLES_FILE in rr.ROW_FILES and STAGE2_SUMMARY in rr.ROW_FILES and rr.VAL_FILE == VAL_SCORE


def test_pack_keeps_the_records_only_without_paths_and_unpack_puts_them_back(tmp_path):
    run = _run(tmp_path / "run")
    assert rr.main(["pack", str(run), str(tmp_path / "rec")]) == 0
    rec = tmp_path / "rec"
    files = sorted(str(p.relative_to(rec)) for p in rec.rglob("*") if p.is_file())
    seed = "llm_cc-hardneg-400-top15/seed-0"
    assert files == sorted(["caption_retrieval/llm_nocc.json", "records.json", "stage1/hardneg-400-top15/seed-0/stage1.json",
                            *(f"{seed}/{n}" for n in (*rr.ROW_FILES, rr.VAL_FILE))])  # no bundle, model, embeddings
    assert all(str(tmp_path) not in p.read_text() for p in rec.rglob("*.json"))
    assert json.loads((rec / seed / "eval.json").read_text())["dataset"] == "DIR/data/val"
    stage1 = json.loads((rec / "stage1/hardneg-400-top15/seed-0/stage1.json").read_text())
    assert set(stage1) == set(rr.STAGE1_KEYS) and stage1["seconds"] == 9.5  # the recipe (with its paths) stays

    fresh = tmp_path / "fresh"
    (fresh / seed).mkdir(parents=True)
    (fresh / seed / "eval.json").write_text('"mine"')
    # the seed that has a record of its own keeps it and takes none of the others (one model per seed); the
    # stage-1 summary and the probe come in; the manifest goes alongside
    assert rr.unpack(rec, fresh) == (2, len(files) - 3)
    assert sorted(p.name for p in (fresh / seed).iterdir()) == ["eval.json"]
    assert (fresh / seed / "eval.json").read_text() == '"mine"' and not rr.val_recorded(fresh / seed)
    assert (fresh / "caption_retrieval" / "llm_nocc.json").read_text() == "0.5\n"
    again = tmp_path / "again"
    assert rr.unpack(rec, again) == (len(files) - 1, 0)
    assert rr.row_recorded(again / seed, frozen=True) and rr.val_recorded(again / seed) == again / seed / "bundle"
    assert not (again / "stage1" / "hardneg-400-top15" / "seed-0" / "model.safetensors").exists()


def test_records_of_other_scenes_are_refused(tmp_path, capsys):
    rec = tmp_path / "rec"
    rr.pack(_run(tmp_path / "run"), rec)
    other = _run(tmp_path / "other", items="b\n")  # another run's scenes
    assert rr.main(["unpack", str(rec), str(other)]) == 2
    assert "other train scenes" in capsys.readouterr().err
    # scenes generated after the unpack are checked too, split by split
    late = tmp_path / "late"
    rr.unpack(rec, late)
    (late / "data" / "train").mkdir(parents=True)
    (late / "data" / "train" / "items.jsonl").write_text("a\ntrain")
    rr.check_records_data(late, "train")
    (late / "data" / "val").mkdir(parents=True)
    (late / "data" / "val" / "items.jsonl").write_text("changed")
    with pytest.raises(LLM2CLIPError, match="other val scenes"):
        rr.check_records_data(late, "val")
    with pytest.raises(LLM2CLIPError, match="no records.json"):
        rr.unpack(tmp_path / "nothing", tmp_path / "x")
    with pytest.raises(LLM2CLIPError, match="not a `llm2clip repro --out` folder"):
        rr.pack(tmp_path / "nothing", tmp_path / "y")


def test_a_seed_whose_bundle_is_gone_loses_its_records_before_it_is_trained_again(tmp_path):
    seed = _run(tmp_path / "run") / "llm_cc-hardneg-400-top15" / "seed-0"
    assert rr.row_recorded(seed, frozen=True)
    (seed / "fact_probe.json").unlink()
    assert not rr.row_recorded(seed, frozen=True) and rr.row_recorded(seed, frozen=False)  # clip77 has no probe
    rr.drop_orphans(seed)  # the bundle is there: its scores may be completed from it
    assert (seed / "eval.json").is_file()
    (seed / "bundle" / "manifest.json").unlink()
    rr.drop_orphans(seed)
    assert not any(seed.glob("*.json"))


def test_a_stage1_run_recorded_without_its_model_is_not_mistaken_for_one_to_train(tmp_path):
    """Unpacked records hold stage1.json but no model: a run that needs the model says so, and what to do,
    instead of the stage-1 trainer's refusal of a non-empty folder."""
    from research.repro_config import ReproCfg
    from research.repro_rows import Work, row_spec, text_encoder

    rr.pack(_run(tmp_path / "run"), tmp_path / "records")
    out = tmp_path / "other"
    rr.unpack(tmp_path / "records", out)
    cfg = ReproCfg()
    work = Work(out, cfg, train=None, val=None)  # type: ignore[arg-type]
    spec = row_spec("llm_cc:hardneg", cfg)
    assert (work.stage1_dir(spec.stage1, 0) / "stage1.json").is_file()
    with pytest.raises(LLM2CLIPError, match="records of a stage-1 run but not its model.*move the folder away"):
        text_encoder(work, spec, 0)
