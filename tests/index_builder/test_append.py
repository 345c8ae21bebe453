"""Incremental adds: new items appended to Flat and IVF index bundles, ids stable, refusals, drift, and the old
bundle intact when an add fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from index_builder_helpers import PixelMapper, db_rows, make_dataset

from index_builder import append as append_module
from index_builder.append import AddCfg, Addition, add_dataset, append_rows
from index_builder.runner import BuildCfg, build_index, build_indexes
from index_builder.shards import target_lock
from llm2clip.bundle import load_bundle, write_manifest
from llm2clip.encoders.onnx import load_onnx_encoders
from llm2clip.errors import BundleError, DatasetError
from llm2clip.hashing import sha256_file
from llm2clip.index import Record, load_index
from llm2clip_cli.main import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """s0..s11 in the corpus root; s20..s27 in batch2/ under it; s30..s45 in batch3/."""
    root = tmp_path_factory.mktemp("append") / "corpus"
    make_dataset(root / "batch2", 8, first=20)
    make_dataset(root / "batch3", 16, first=30)
    make_dataset(root, 12)
    return root


@pytest.fixture(scope="module")
def ivf_corpus(tmp_path_factory) -> Path:
    """s0..s159 in the corpus root, enough for 4 lists of about 40 (FAISS asks 39 a centroid); s160..s175 in new/."""
    root = tmp_path_factory.mktemp("append-ivf") / "corpus"
    make_dataset(root / "new", 16, first=160)
    make_dataset(root, 160)
    return root


@pytest.fixture(scope="module")
def text_encoder(tiny_bundle):
    return load_onnx_encoders(tiny_bundle, threads=1)[1]


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def vectors(folder: Path) -> np.ndarray:
    index = load_index(folder)
    try:
        return index.reconstruct_all() if "IVF" not in index.manifest["factory"] else None
    finally:
        index.close()


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def leftovers(folder: Path) -> list[str]:
    """Staging folders an add left beside the bundle (the lock file is expected)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.") and p.is_dir())


def build_text(corpus: Path, bundle: Path, out: Path, factory: str | None = None) -> dict:
    return build_index(corpus, bundle, out, "text", BuildCfg(progress=False, threads=1, factory=factory))


def test_add_to_a_flat_index_through_the_cli(tiny_bundle, corpus, text_encoder, tmp_path, capsys):
    out = tmp_path / "indexes"
    list(build_indexes(corpus, tiny_bundle, out, BuildCfg(progress=False, threads=1)))
    before_rows, before_vectors, before = db_rows(out / "text"), vectors(out / "text"), manifest_of(out / "text")
    argv = ["index", "add", "--index", str(out), "--data", str(corpus / "batch2"), "--model", str(tiny_bundle),
            "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"image index: added 8 items (8 rows) -> {out / 'image'}: 20 rows; 0 already there",
                     f"text index: added 8 items (8 rows) -> {out / 'text'}: 20 rows; 0 already there"]
    rows = db_rows(out / "text")
    # existing ids keep their rows, bit for bit; the new ones follow, their images relative to the corpus root
    assert rows[:12] == before_rows
    assert [r[:3] for r in rows[12:]] == [(12 + k, f"s{20 + k}", f"batch2/img/{20 + k}.png") for k in range(8)]
    now = vectors(out / "text")
    assert np.array_equal(now[:12], before_vectors)
    new_captions = [r[3] for r in rows[12:]]
    assert np.allclose(now[12:], text_encoder.encode(new_captions), atol=1e-5)
    index = load_index(out / "text")
    _, found = index.search(text_encoder.encode(new_captions), k=1)
    assert list(found[:, 0]) == list(range(12, 20))
    index.close()
    manifest = manifest_of(out / "text")
    assert manifest["count"] == 20 and "drift" not in manifest  # a Flat index has nothing to retrain
    kept = {k: v for k, v in before.items() if k not in ("count", "files", "fingerprint", "created", "build")}
    assert {k: manifest[k] for k in kept} == kept
    assert {k: v for k, v in manifest["build"].items() if k != "history"} == before["build"]
    (entry,) = manifest["build"]["history"]
    assert (entry["items_added"], entry["rows_added"], entry["rows_before"]) == (8, 8, 12)
    assert entry["source"] == str((corpus / "batch2").resolve()) and entry["encoder"]["precision"] == "fp32"

    # the same data again: nothing new, no new version
    files = {m: snapshot(out / m) for m in ("image", "text")}
    assert main(argv) == 0
    assert "added 0 items (0 rows)" in capsys.readouterr().out
    assert {m: snapshot(out / m) for m in ("image", "text")} == files


def test_add_to_an_ivf_index_and_drift(tiny_bundle, ivf_corpus, text_encoder, tmp_path):
    target = tmp_path / "ivf"
    build_text(ivf_corpus, tiny_bundle, target, factory="IVF4,Flat")
    before = db_rows(target)
    res = add_dataset(target, ivf_corpus / "new", tiny_bundle, AddCfg(threads=1, progress=False))
    assert (res.items_added, res.rows_added, res.already) == (16, 16, 0)
    rows = db_rows(target)
    assert rows[:160] == before and [r[1] for r in rows[160:]] == [f"s{160 + k}" for k in range(16)]
    index = load_index(target)
    assert index.manifest["factory"] == "IVF4,Flat" and index.count == 176
    scores, found = index.search(text_encoder.encode([r[3] for r in rows[160:]]), k=4)
    # the tiny random model embeds "scene 161" and "scene 116" alike (the same tokens): own row among the best
    assert all(160 + k in found[k] for k in range(16)) and np.allclose(scores[:, 0], 1.0, atol=1e-4)
    index.close()
    drift = res.drift
    # captions like the trained ones: as near their centroids, lists as even, 1.1x the rows trained on
    assert drift["needs_retrain"] is False and drift["reason"] is None
    assert drift["trained"]["rows"] == 160 and drift["growth"] == pytest.approx(1.1)
    assert drift["residual_ratio"] < drift["thresholds"]["residual_ratio"]
    assert drift["imbalance_ratio"] < drift["thresholds"]["imbalance_ratio"]

    # vectors from nowhere near the corpus, through the function API
    rng = np.random.default_rng(5)
    odd = rng.normal(size=(3, 32)).astype(np.float32)
    odd /= np.linalg.norm(odd, axis=1, keepdims=True)
    records = [Record(id=f"odd{k}", uri=None, caption=f"odd {k}", caption_key="long") for k in range(3)]
    manifest = append_rows(target, Addition(odd, records, "synthetic"), load_bundle(tiny_bundle).fingerprint)
    drift = manifest["drift"]
    assert drift["needs_retrain"] is True and "far from their centroids" in drift["reason"]
    assert drift["residual_ratio"] > 1.5 and drift["trained"] == res.drift["trained"] and drift["added_rows"] == 19
    assert [r[1] for r in db_rows(target)[176:]] == ["odd0", "odd1", "odd2"]
    assert [h["source"] for h in manifest["build"]["history"]] == [str((ivf_corpus / "new").resolve()), "synthetic"]
    assert load_index(target).count == 179


def test_growth_past_twice_the_trained_rows_warns(tiny_bundle, corpus, tmp_path, capsys):
    target = tmp_path / "ivf"
    build_text(corpus, tiny_bundle, target, factory="IVF4,Flat")
    assert main(["index", "add", "--index", str(target), "--data", str(corpus / "batch3"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "added 16 items (16 rows)" in captured.out  # the model bundle the build recorded
    (warning,) = captured.err.strip().splitlines()
    assert warning.startswith(f"llm2clip: warning: {target} needs retraining: ") and "2.33x the 12" in warning
    assert "llm2clip index build" in warning
    assert manifest_of(target)["drift"]["needs_retrain"] is True


def test_an_image_index_finds_its_new_items(tiny_bundle, corpus, tmp_path):
    mapper = PixelMapper(load_bundle(tiny_bundle).preprocess.size)
    target = tmp_path / "image"
    build_index(corpus, tiny_bundle, target, "image", BuildCfg(progress=False), mapper=mapper)
    res = add_dataset(target, corpus / "batch2", tiny_bundle, AddCfg(progress=False), mapper=mapper)
    assert res.rows_added == 8
    from PIL import Image

    from llm2clip.preprocess import preprocess_image

    pixels = np.stack([preprocess_image(Image.open(corpus / "batch2" / f"img/{20 + k}.png"),
                                        load_bundle(tiny_bundle).preprocess) for k in range(8)])
    index = load_index(target)
    _, found = index.search(mapper(pixels), k=1)
    assert list(found[:, 0]) == list(range(12, 20))
    assert [r.uri for r in index.records([12, 19])] == ["batch2/img/20.png", "batch2/img/27.png"]
    index.close()


def another_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A real bundle with another fingerprint: the tiny one plus one file."""
    other = tmp_path / "other-bundle"
    shutil.copytree(tiny_bundle, other)
    (other / "NOTES.txt").write_text("another model\n")
    write_manifest(other, json.loads((other / "manifest.json").read_text()))
    return other


@pytest.mark.parametrize("case", ["other_model", "modality", "captions", "outside_root", "no_model_recorded"])
def test_refusals_leave_the_index_as_it_was(case, tiny_bundle, corpus, tmp_path, capsys):
    bundle = tiny_bundle
    if case == "no_model_recorded":
        bundle = tmp_path / "gone"
        shutil.copytree(tiny_bundle, bundle)
    target = tmp_path / "text"
    build_text(corpus, bundle, target)
    files = snapshot(target)
    data, extra = corpus / "batch2", ["--model", str(tiny_bundle)]
    if case == "other_model":
        other = another_bundle(tiny_bundle, tmp_path)
        extra = ["--model", str(other)]
        fps = [load_bundle(b).fingerprint[:16] for b in (tiny_bundle, other)]
        needles = [f"built with model bundle {fps[0]}", f"--model {other} is {fps[1]}", "rebuild the index"]
    elif case == "modality":
        extra += ["--modality", "image"]
        needles = [f"index {target} is a text index, not image"]
    elif case == "captions":
        extra += ["--captions", "short"]
        needles = ["holds the captions long, not short"]
    elif case == "outside_root":
        data = make_dataset(tmp_path / "elsewhere", 2, first=50).root
        needles = [f"lies outside {corpus.resolve()}", "put the new items"]
    else:
        shutil.rmtree(bundle)
        extra = []
        needles = ["names no model bundle that is still there", "pass --model"]
    assert main(["index", "add", "--index", str(target), "--data", str(data), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llm2clip: error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    assert snapshot(target) == files and not leftovers(target)


def test_function_api_refusals(tiny_bundle, corpus, tmp_path):
    target = tmp_path / "text"
    build_text(corpus, tiny_bundle, target)
    fp = load_bundle(tiny_bundle).fingerprint
    rec = [Record(id="new", uri=None, caption="c")]
    files = snapshot(target)
    assert append_rows(target, Addition(np.zeros((0, 32), np.float32), [], "x"), fp)["count"] == 12
    assert snapshot(target) == files  # nothing to add: no new version
    with pytest.raises(BundleError, match="holds 32-dimensional vectors; the rows to add have shape \\(1, 16\\)"):
        append_rows(target, Addition(np.ones((1, 16), np.float32), rec, "x"), fp)
    with pytest.raises(BundleError, match="built with model bundle"):
        append_rows(target, Addition(np.ones((1, 32), np.float32), rec, "x"), "0" * 64)
    with pytest.raises(BundleError, match="already holds 1 of these ids \\(e.g. 's3'\\)"):
        append_rows(target, Addition(np.ones((1, 32), np.float32), [Record(id="s3", uri=None, caption="c")], "x"), fp)
    with target_lock(target), pytest.raises(BundleError, match="another `llm2clip index` command is writing"):
        add_dataset(target, corpus / "batch2", tiny_bundle, AddCfg(progress=False))
    with pytest.raises(DatasetError):
        add_dataset(target, tmp_path / "nowhere", tiny_bundle, AddCfg(progress=False))
    assert manifest_of(target)["count"] == 12 and not leftovers(target)


def test_a_failed_add_leaves_the_old_bundle_intact(tiny_bundle, corpus, tmp_path, monkeypatch):
    target = tmp_path / "ivf"
    build_text(corpus, tiny_bundle, target, factory="IVF4,Flat")
    files, rows = snapshot(target), db_rows(target)
    fp = load_bundle(tiny_bundle).fingerprint
    vec = np.eye(1, 32, dtype=np.float32)
    # dies while writing items.sqlite, after the grown FAISS index was written to the staging folder
    bad = Record(id="bad", uri=None, caption="c", meta={"not json": object()})
    with pytest.raises(TypeError):
        append_rows(target, Addition(vec, [bad], "x"), fp)
    assert snapshot(target) == files and db_rows(target) == rows and not leftovers(target)

    # dies at the very last step, the rename
    def publish(stage, folder):
        raise OSError("disk gone")

    monkeypatch.setattr(append_module, "publish", publish)
    with pytest.raises(OSError, match="disk gone"):
        add_dataset(target, corpus / "batch2", tiny_bundle, AddCfg(progress=False, threads=1))
    assert snapshot(target) == files and db_rows(target) == rows and not leftovers(target)
    load_index(target).close()
    monkeypatch.undo()
    assert add_dataset(target, corpus / "batch2", tiny_bundle, AddCfg(progress=False, threads=1)).rows_added == 8


def test_add_to_an_hnsw_index(tiny_bundle, corpus, text_encoder, tmp_path):
    target = tmp_path / "hnsw"
    build_text(corpus, tiny_bundle, target, factory="HNSW8,Flat")
    search_params = manifest_of(target)["search_params"]
    res = add_dataset(target, corpus / "batch2", tiny_bundle, AddCfg(threads=1, progress=False))
    assert res.rows_added == 8 and res.drift is None and res.manifest["search_params"] == search_params
    index = load_index(target)
    _, found = index.search(text_encoder.encode([r[3] for r in db_rows(target)[12:]]), k=1)
    assert list(found[:, 0]) == list(range(12, 20))
    index.close()
