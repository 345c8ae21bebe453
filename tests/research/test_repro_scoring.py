"""How the repro scores a row: a frozen encoder's vectors through the row's adapter, each text embedded once."""

from __future__ import annotations

import json

import numpy as np

from research.repro import _drop_stale_scores
from research.repro_scoring import (
    BUNDLE_SCORING,
    FROZEN_SCORING,
    RawEncoders,
    RowScoring,
    ThroughAdapter,
    UnitView,
)
from training.caption_retrieval import MemoEncoder, paraphrase_twin_texts

TEXTS = ["a red coat at the top left, upside down", "two items: a bag and a coat", "a small blue dress"]


def test_through_the_adapter_is_the_exported_text_encoder(tiny_model, tiny_llm_dir, tiny_bundle):
    from llm2clip.encoders import load_encoders
    from llm2clip.encoders.torch_backend import TorchTextEncoder

    model, _ = tiny_model
    _, onnx_text = load_encoders(tiny_bundle, "fp32")
    raw = MemoEncoder(TorchTextEncoder.from_folder(tiny_llm_dir, onnx_text.tokenizer.max_tokens, precision="fp32",
                                                   normalize=False))
    ours = ThroughAdapter(raw, model).encode(TEXTS)
    reference = onnx_text.encode(TEXTS)
    assert ours.shape == reference.shape
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * reference).sum(axis=1).min() > 0.999  # the same text side, another runtime
    assert ThroughAdapter(raw, model).describe()["scoring"] == FROZEN_SCORING


def test_raw_encoders_keep_every_vector_and_one_model(tiny_llm_dir, tmp_path):
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(tiny_llm_dir, other)
    raw = RawEncoders()
    first = raw.get(tiny_llm_dir, 64)
    before = first.encode(TEXTS)
    assert raw.get(tiny_llm_dir, 64) is first and first.encoder.model is not None
    second = raw.get(other, 64)
    second.encode(TEXTS[:1])
    assert first.encoder.model is None and second.encoder.model is not None  # one model in memory
    again = first.encode(TEXTS)  # every text is known: no model is loaded again
    assert first.encoder.model is None and np.array_equal(again, before) and first.encoded == len(TEXTS)
    assert raw.get(tiny_llm_dir, 32) is not first  # another cut is another encoder
    unit = UnitView(first).encode(TEXTS)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    assert np.allclose(unit * np.linalg.norm(before, axis=1, keepdims=True), before, atol=1e-5)
    assert UnitView(first).about["precision"] == "bf16" and first.about["max_tokens"] == 64


def test_scores_made_another_way_are_made_again(tmp_path):
    names = ("eval.json", "text_twins.json", "seconds.json")
    for name in names:
        (tmp_path / name).write_text(json.dumps({"t2i_r1": 0.5}))
    _drop_stale_scores(tmp_path, BUNDLE_SCORING)  # no "scoring": an older run, which scored the fp32 bundle
    assert all((tmp_path / n).is_file() for n in names)
    _drop_stale_scores(tmp_path, FROZEN_SCORING)
    assert not any((tmp_path / n).exists() for n in names)
    (tmp_path / "eval.json").write_text(json.dumps({"scoring": FROZEN_SCORING}))
    _drop_stale_scores(tmp_path, FROZEN_SCORING)
    assert (tmp_path / "eval.json").is_file()


def test_row_scoring_records_how_it_scored(tiny_bundle, check_scenes):
    from llm2clip.data import read_dataset

    scoring = RowScoring(tiny_bundle)
    result = scoring.evaluate(check_scenes)
    assert result["scoring"] == BUNDLE_SCORING and result["model"] and result["n"] == 24
    ds = read_dataset(check_scenes)
    assert scoring.text_twins(ds) is not None  # a val split has near twins
    # the long captions were embedded for the scores: the twin probe adds only the paraphrases
    pairs, paraphrases = paraphrase_twin_texts(ds)
    captions = {it.long for it in ds.items} | {it.short for it in ds.items}
    assert scoring.text.encoded == len(captions | {paraphrases[i] for p in pairs for i in p})
