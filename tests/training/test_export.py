import json

import numpy as np
import pytest

from llm2clip.bundle import load_bundle
from llm2clip.errors import BundleError
from training.export import compare_with_torch

TEXTS = [
    "a red sneaker",
    "a small blue bag in the top left cell, mirrored, on a striped green background " * 3,
    "",
    "word " * 300,  # longer than everything else: the others are padded
]


def test_onnx_matches_torch(tiny_bundle, tiny_model):
    model, llm = tiny_model
    rng = np.random.default_rng(0)
    size = load_bundle(tiny_bundle).preprocess.size
    pixels = rng.normal(size=(3, 3, size, size)).astype(np.float32)
    cos_img, cos_txt = compare_with_torch(tiny_bundle, model, llm, TEXTS, pixels)
    assert cos_img.min() > 0.9999
    assert cos_txt.min() > 0.9999


def test_padding_does_not_change_a_text_embedding(tiny_bundle):
    from llm2clip.encoders.onnx import load_onnx_encoders

    _, txt = load_onnx_encoders(tiny_bundle)
    alone = txt.encode([TEXTS[1]], batch_size=1)
    padded = txt.encode([TEXTS[1], TEXTS[3]], batch_size=2)[:1]
    assert float((alone * padded).sum()) > 0.9999


def test_manifest_records_files_and_fingerprint(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert set(b.manifest["files"]) >= {"image_encoder.onnx", "text_encoder.onnx", "tokenizer/tokenizer.json"}
    assert len(b.fingerprint) == 64
    assert b.manifest["text"]["max_tokens"] >= 512


def test_corrupt_bundle_is_refused(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "image_encoder.onnx", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(copy)
    (copy / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
