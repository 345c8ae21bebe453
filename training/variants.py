"""Precision variants of a bundle's text encoder, and the check that admits each one.

Variants (``--precisions`` of ``llm2clip export``):
- ``fp32``: the exported ONNX graph, the reference; always present.
- ``int8``: ONNX Runtime dynamic quantisation of every MatMul with a constant weight (per-channel int8
  weights, per-tensor uint8 activations quantised at run time: the u8s8 kernels that AVX-512 VNNI, AVX-VNNI
  and AMX run). MatMuls between two activations (attention scores) stay fp32: their range changes per
  query, and they are a small share of the FLOPs.
- ``bf16``: the LLM's weights in bf16 with the fp32 adapter, served by torch with SDPA attention (ONNX
  Runtime's CPU kernels have no bf16 MatMul). Adapter bundles only.
- ``fp16``: the ONNX graph in fp16 with fp32 inputs and outputs, for ONNX Runtime's CUDA and TensorRT
  providers. It cannot be checked without a GPU, so export writes it only when asked.

Each variant other than fp32 is checked against fp32 on a held-out scene set: cosine of the text
embeddings, and text-to-image / image-to-text R@1 with fp32 image embeddings. The result goes in the
manifest; the service refuses a variant whose check failed.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm2clip.cliargs import opt

log = logging.getLogger(__name__)

DEFAULT_PRECISIONS = ("fp32", "int8", "bf16")
ALL_PRECISIONS = ("fp32", "int8", "bf16", "fp16")
FILES = {"int8": "text_encoder.int8.onnx", "fp16": "text_encoder.fp16.onnx", "bf16": "text_encoder.bf16"}
CHECK_SCENES = 200  # scenes generated for the check when no --check-data is given
CHECK_SEED = 7919  # a seed no other split of the project uses
CALIBRATION_SCENES = 64  # scenes whose captions calibrate SmoothQuant when no --calibration-data is given
INT8_METHOD = "blockwise"


@dataclass(frozen=True)
class CheckThresholds:
    """When a variant is close enough to fp32 to be served: retrieval must not drop, and rankings must mostly
    agree. Chosen on the check set (held-out scenes), see training/variants.py's docstring. The worst single
    caption's cosine is recorded but does not decide: the default LLM's embeddings of a few short captions move
    under any precision change (bf16 too, with unchanged R@1)."""

    min_cosine_mean: float = 0.98  # over every checked caption, long and short
    # absolute, each of long t2i, long i2t, short t2i: 1 point (2 of 200). A drop fails the check only when it is
    # also unlikely to be near-ties flipping both ways: with ~7 of 200 queries flipping (bf16's agreement 0.967),
    # the net difference alone moves by about +-1.3 points from one trained model to the next
    max_r1_drop: float = field(default=0.01, metadata=opt(
        "a variant whose t2i or i2t R@1 is more than this below fp32's, and significantly so (one-sided exact "
        "McNemar test on the paired queries), fails its check and is never served"))
    max_drop_p: float = 0.05  # the McNemar p-value under which a drop over max_r1_drop counts
    min_top1_agreement: float = 0.9  # queries (captions and images) whose top-1 answer is fp32's


def quantize_int8(fp32: Path, out: Path) -> dict[str, Any]:
    """ONNX Runtime dynamic int8: every MatMul with a constant weight gets per-channel int8 weights and
    uint8 activations scaled per call (one scale for the whole activation matrix). ``fp32`` should be the
    graph of a smoothed LLM (``training.smoothing``): unsmoothed, the outlier channels ruin short captions."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
    return {"method": "onnxruntime dynamic", "weights": "int8 per channel", "activations": "uint8 per call",
            "ops": "MatMul with constant B",
            # one activation scale per call: a text's embedding would depend on what else is in its batch
            # (padding rows, a batch mate's outlier token), so the variant runs one text per call
            "max_batch_size": 1}


def quantize_int8_blockwise(fp32: Path, out: Path, block_size: int = 32) -> dict[str, Any]:
    """ONNX Runtime MatMulNBits with 8-bit weights in blocks of ``block_size`` along the input dimension, and
    activations quantised to int8 per row and block at run time (accuracy level 4: the int8 kernels)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), algo_config=cfg)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return {"method": "onnxruntime MatMulNBits", "weights": f"int8 symmetric, blocks of {block_size}",
            "activations": f"int8 per row and block of {block_size}"}


def convert_fp16(fp32: Path, out: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(out))
    return {"method": "onnxruntime float16 conversion", "io": "fp32"}


def write_bf16(llm: Any, adapter: Any, out: Path) -> dict[str, Any]:
    """The torch variant: the LLM as a Hugging Face folder, its linear layers' weights in bf16 and the rest
    (embeddings, norms) in fp32, as ``TorchTextEncoder`` runs them; the adapter in fp32."""
    import torch
    from safetensors.torch import save_file

    out.mkdir()
    model = llm.model
    linear = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    # a copy of the weights: the fp32 model in memory stays as it is
    weights = {k: v.detach().to(torch.bfloat16 if k in linear else torch.float32) for k, v in
               model.state_dict().items()}
    model.save_pretrained(out, state_dict=weights, safe_serialization=True)
    save_file({k: v.detach().float().contiguous() for k, v in adapter.state_dict().items()},
              str(out / "adapter.safetensors"))
    return {"method": "bf16 linear weights under autocast; embeddings, norms, residual stream, pooling and "
                      "adapter in fp32", "runtime": "torch, SDPA attention"}


def check_set(check_data: str | Path | None, work: Path) -> Path:
    """The held-out scene set the variants are checked on: ``check_data``, or a generated one."""
    if check_data is not None:
        return Path(check_data)
    from llm2clip.data import generate_scenes

    folder = work / "check-scenes"
    generate_scenes(folder, CHECK_SCENES, "val", CHECK_SEED, progress=False)
    return folder


def calibration_texts(data: str | Path | None, work: Path, n: int = CALIBRATION_SCENES) -> list[str]:
    """Captions SmoothQuant measures activations on: the first ``n`` items' captions of ``data``, or of
    generated training-like scenes (a seed of their own: neither the check set nor any split)."""
    from llm2clip.data import read_dataset

    if data is None:
        from llm2clip.data import generate_scenes

        data = work / "calibration-scenes"
        generate_scenes(data, n, "train", CHECK_SEED + 1, progress=False)
    items = read_dataset(data).items[:n]
    return [text for item in items for text in item.captions.values()]


def _retrieval(long: np.ndarray, short: np.ndarray, image: np.ndarray) -> dict[str, Any]:
    """Each query's top-1 answer, and whether it is right, per direction (row i of each describes item i)."""
    truth = np.arange(len(image))
    sim = long @ image.T  # one product for both directions
    top1 = {"t2i": sim.argmax(1), "i2t": sim.argmax(0), "t2i_short": (short @ image.T).argmax(1)}
    hits = {k: v == truth for k, v in top1.items()}
    return {"r1": {k: float(h.mean()) for k, h in hits.items()}, "hits": hits, "top1": np.concatenate(list(top1.values()))}


def mcnemar_drop_p(base_hits: np.ndarray, hits: np.ndarray) -> tuple[int, int, float]:
    """One-sided exact McNemar test that ``hits`` are worse than ``base_hits`` on the same queries: (queries
    only the base gets right, queries only the variant gets right, p-value)."""
    lost = int((base_hits & ~hits).sum())
    won = int((~base_hits & hits).sum())
    from training.eval import sign_test_tail

    return lost, won, sign_test_tail(lost + won, lost)


def _r1_problems(base: dict[str, Any], got: dict[str, Any], thresholds: CheckThresholds) -> tuple[list[str], dict]:
    problems, paired = [], {}
    for k, r1 in got["r1"].items():
        drop = base["r1"][k] - r1
        lost, won, p = mcnemar_drop_p(base["hits"][k], got["hits"][k])
        paired[k] = {"lost": lost, "won": won, "p": round(p, 4)}
        if drop > thresholds.max_r1_drop + 1e-9 and p < thresholds.max_drop_p:
            problems.append(f"{k} R@1 {r1:.3f} is {drop * 100:.1f} points below fp32's {base['r1'][k]:.3f} "
                            f"(queries lost {lost}, won {won}, p {p:.3f})")
    return problems, paired


def check_variants(stage: Any, variants: list[str], data: str | Path, thresholds: CheckThresholds,
                   threads: int | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Check each variant of the (not yet published) bundle ``stage`` against its fp32 text encoder."""
    from llm2clip.data import read_dataset
    from llm2clip.encoders.onnx import OnnxImageEncoder, OnnxTextEncoder
    from training.eval import embed_images

    ds = read_dataset(data)
    n = len(ds)
    texts = [it.long for it in ds.items] + [it.short for it in ds.items]
    image = embed_images(OnnxImageEncoder(stage, threads=threads), ds, 32, progress)
    ref_enc = OnnxTextEncoder(stage, threads=threads, precision="fp32")
    t0 = time.perf_counter()
    ref = ref_enc.encode(texts)
    ref_s = time.perf_counter() - t0
    del ref_enc
    base = _retrieval(ref[:n], ref[n:], image)
    results: dict[str, dict[str, Any]] = {}
    for name in variants:
        t0 = time.perf_counter()
        emb = variant_encoder(stage, name, threads).encode(texts)
        seconds = time.perf_counter() - t0
        cos = (emb * ref).sum(axis=1)
        got = _retrieval(emb[:n], emb[n:], image)
        agreement = float((got["top1"] == base["top1"]).mean())
        problems = []
        if cos.mean() < thresholds.min_cosine_mean:
            problems.append(f"mean cosine {cos.mean():.4f} < {thresholds.min_cosine_mean}")
        r1_problems, paired = _r1_problems(base, got, thresholds)
        problems += r1_problems
        if agreement < thresholds.min_top1_agreement:
            problems.append(f"top-1 agreement with fp32 {agreement:.3f} < {thresholds.min_top1_agreement}")
        results[name] = {
            "passed": not problems,
            "reason": "; ".join(problems) or "within thresholds",
            "cosine_mean": round(float(cos.mean()), 6),
            "cosine_p01": round(float(np.percentile(cos, 1)), 6),
            "cosine_min": round(float(cos.min()), 6),
            "top1_agreement": round(agreement, 4),
            "r1": {k: round(v, 4) for k, v in got["r1"].items()},
            "r1_fp32": {k: round(v, 4) for k, v in base["r1"].items()},
            "r1_paired": paired,
            "n_texts": len(texts),
            "n_images": n,
            "data": ds.root.name,
            "thresholds": asdict(thresholds),
            # on the exporting machine: a hint of the variant's speed, not a promise elsewhere
            "encode_seconds": round(seconds, 2),
            "encode_seconds_fp32": round(ref_s, 2),
        }
        log.info("variant %s: %s", name, json.dumps(results[name]))
    return results


def variant_encoder(stage: Any, name: str, threads: int | None):
    from llm2clip.encoders.onnx import OnnxTextEncoder

    if stage.text_variants[name].get("runtime") == "torch":
        from llm2clip.encoders.torch_backend import TorchTextEncoder

        return TorchTextEncoder.from_bundle(stage, name, device="cpu", threads=threads)
    return OnnxTextEncoder(stage, threads=threads, precision=name)


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="llm2clip-check-"))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
