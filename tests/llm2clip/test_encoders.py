"""The encoder interface: token-budget batching, tokenisation, capability probe and variant choice."""

from __future__ import annotations

import numpy as np
import pytest

from llm2clip.bundle import ModelBundle
from llm2clip.encoders.base import TextBatch, TextEncoder, pad_batch, plan_batches
from llm2clip.encoders.capability import Capabilities, preferred_precisions
from llm2clip.encoders.select import choose_text_precision, variant_problem
from llm2clip.errors import BundleError
from llm2clip.tokenizer import Tokenizer, normalize_text, source_offset


def test_plan_batches_keeps_padded_size_under_the_budget_and_covers_every_row():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    batches = plan_batches(lengths, max_batch_tokens=1024, max_batch_size=16)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(500))
    for idx in batches:
        assert len(idx) <= 16
        assert len(idx) * lengths[idx].max() <= 1024
    # longest first: the first batch holds the longest row
    assert lengths[batches[0]].max() == lengths.max()
    # short rows travel many to a batch, long ones few
    sizes = {int(lengths[idx].max()): len(idx) for idx in batches}
    assert sizes[min(sizes)] > sizes[max(sizes)]


def test_a_row_longer_than_the_budget_goes_alone():
    batches = plan_batches([5000, 10, 10], max_batch_tokens=100, max_batch_size=8)
    assert [b.tolist() for b in batches] == [[0], [1, 2]]
    with pytest.raises(ValueError):
        plan_batches([1], max_batch_tokens=0)


def test_pad_batch_pads_right_with_the_pad_id():
    b = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=2, truncated=[False, True])
    assert b.input_ids.tolist() == [[5, 6, 7], [8, 2, 2]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b.truncated.tolist() == [False, True] and b.tokens == 4


class SumEncoder(TextEncoder):
    """Embeds a text as (sum of its ids, count of its tokens): any mix-up of rows or padding shows."""

    backend = "fake"

    def __init__(self, tokenizer: Tokenizer, max_batch_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.dim = 2
        self.max_batch_tokens = max_batch_tokens
        self.shapes: list[tuple[int, int]] = []

    def encode_tokens(self, batch: TextBatch) -> np.ndarray:
        self.shapes.append(batch.input_ids.shape)
        ids = np.where(batch.attention_mask == 1, batch.input_ids, 0)
        return np.stack([ids.sum(1), batch.attention_mask.sum(1)], axis=1).astype(np.float32)


def test_encode_answers_in_input_order_in_token_budget_batches(tiny_llm_dir):
    tok = Tokenizer(tiny_llm_dir, 64)
    texts = [("word " * n).strip() for n in (3, 60, 1, 30, 7, 200, 2)]
    enc = SumEncoder(tok, max_batch_tokens=128)
    out = enc.encode(texts)
    rows, _ = tok.ids(texts)
    assert out[:, 0].tolist() == [float(r.sum()) for r in rows]
    assert out[:, 1].tolist() == [float(len(r)) for r in rows]
    assert all(b * length <= 128 or b == 1 for b, length in enc.shapes)
    done = []
    enc.encode(texts, progress=lambda n, tokens: done.append((n, tokens)))
    assert sum(n for n, _ in done) == len(texts) and sum(t for _, t in done) == sum(len(r) for r in rows)


def test_tokenizer_normalises_whitespace_and_unicode(tiny_llm_dir):
    tok = Tokenizer(tiny_llm_dir, 512)
    assert normalize_text("  a\tred \n\n sneaker ") == "a red sneaker"
    assert normalize_text("cafe\u0301") == "caf\u00e9"
    a, _ = tok.ids(["a red  sneaker\n"])
    b, _ = tok.ids(["a red sneaker"])
    assert a[0].tolist() == b[0].tolist()
    ids, mask, truncated = tok(["a red sneaker", "word " * 600])
    rows, flags = tok.ids(["a red sneaker", "word " * 600])
    assert ids[0, : len(rows[0])].tolist() == rows[0].tolist() and mask[0].sum() == len(rows[0])
    assert flags.tolist() == truncated.tolist() == [False, True] and len(rows[1]) == 512


def test_source_offset_maps_normalised_positions_back_through_dropped_whitespace():
    text = "  a\tred \n\n sneaker "
    norm = normalize_text(text)  # "a red sneaker"
    for end in range(len(norm) + 1):
        head = text[: source_offset(text, end)]
        assert normalize_text(head) == norm[:end].strip()
        assert not head or not head[-1].isspace() or norm[end - 1] == " "
    assert text[: source_offset(text, len("a red"))] == "  a\tred"
    assert source_offset(text, 0) == 0


@pytest.mark.parametrize("add_special", [False, True])
def test_kept_chars_is_where_the_cut_text_stops(tiny_llm_dir, add_special):
    tok = Tokenizer(tiny_llm_dir, 16, add_special_tokens=add_special)
    text = "  A red sneaker\n\n  sits in the top left cell,   upright. " * 6
    kept = tok.kept_chars(text)
    assert kept is not None and 0 < kept < len(text)
    # the kept part alone fills the budget and is not cut; one more word would be
    assert tok.count(text[:kept]) == 16 and tok.kept_chars(text[:kept]) is None
    assert tok.count(text[: kept + len(text[kept:]) - len(text[kept:].lstrip()) + 1]) > 16
    assert tok.kept_chars("a red sneaker") is None


@pytest.mark.parametrize("caps, expected", [
    (Capabilities(cpu_flags=frozenset()), ["fp32"]),
    (Capabilities(cpu_flags=frozenset({"avx512_vnni", "avx512_bf16"}), torch_installed=True),
     ["bf16", "int8", "fp32"]),
    (Capabilities(cpu_flags=frozenset({"avx512_vnni", "avx512_bf16"}), torch_installed=False), ["int8", "fp32"]),
    (Capabilities(cpu_flags=frozenset({"amx_bf16", "amx_int8", "amx_tile"}), torch_installed=True),
     ["bf16", "int8", "fp32"]),
    (Capabilities(cpu_flags=frozenset({"avx_vnni"})), ["int8", "fp32"]),
    (Capabilities(ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"), torch_installed=True,
                  torch_cuda=True), ["fp16", "bf16", "fp32"]),
])
def test_preferred_precisions_follow_the_probe(caps, expected):
    assert preferred_precisions(caps) == expected


def fake_bundle(tmp_path, variants) -> ModelBundle:
    return ModelBundle(path=tmp_path, manifest={"text": {"file": "text_encoder.onnx", "variants": variants}})


PASSED = {"passed": True, "reason": "within thresholds"}
FAILED = {"passed": False, "reason": "t2i R@1 0.310 is 4.0 points below fp32's 0.350"}
VNNI = Capabilities(cpu_flags=frozenset({"avx512_vnni", "avx512_bf16"}), torch_installed=True)


def test_a_variant_that_failed_its_check_is_refused_by_name_and_skipped_by_auto(tmp_path, caplog):
    bundle = fake_bundle(tmp_path, {
        "fp32": {"file": "a", "runtime": "onnxruntime"},
        "int8": {"file": "b", "runtime": "onnxruntime", "check": FAILED},
        "bf16": {"file": "c", "runtime": "torch", "check": PASSED},
    })
    with pytest.raises(BundleError, match="failed its check.*4.0 points"):
        choose_text_precision(bundle, "int8", VNNI)
    no_torch = Capabilities(cpu_flags=VNNI.cpu_flags, torch_installed=False)
    assert choose_text_precision(bundle, "auto", VNNI) == "bf16"
    # without torch, int8 would come next: its failed check sends auto to fp32
    assert choose_text_precision(bundle, "auto", no_torch) == "fp32"
    assert "not using the int8 text encoder" in caplog.text
    assert choose_text_precision(bundle, "fp32", VNNI) == "fp32"


def test_unchecked_missing_and_unrunnable_variants_are_refused(tmp_path):
    bundle = fake_bundle(tmp_path, {
        "fp32": {"file": "a", "runtime": "onnxruntime"},
        "int8": {"file": "b", "runtime": "onnxruntime"},  # never checked
        "bf16": {"file": "c", "runtime": "torch", "check": PASSED},
    })
    assert "never checked" in variant_problem(bundle, "int8", VNNI)
    assert "no fp16 text encoder" in variant_problem(bundle, "fp16", VNNI)
    no_torch = Capabilities(cpu_flags=VNNI.cpu_flags, torch_installed=False)
    assert "not installed" in variant_problem(bundle, "bf16", no_torch)
    assert choose_text_precision(bundle, "auto", no_torch) == "fp32"
    with pytest.raises(BundleError, match="unknown precision"):
        choose_text_precision(bundle, "int4", VNNI)


def test_a_format_1_bundle_has_its_fp32_encoder_only(tmp_path):
    bundle = ModelBundle(path=tmp_path, manifest={"text": {"file": "text_encoder.onnx"}})
    assert list(bundle.text_variants) == ["fp32"]
    assert choose_text_precision(bundle, "auto", VNNI) == "fp32"
