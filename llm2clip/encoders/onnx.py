"""ONNX Runtime backend: reads only the model bundle (ONNX files, tokenizer, manifest)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llm2clip.bundle import ModelBundle
from llm2clip.encoders.base import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BATCH_TOKENS,
    ImageEncoder,
    TextBatch,
    TextEncoder,
    l2_normalize,
)
from llm2clip.errors import require_runtime
from llm2clip.tokenizer import Tokenizer

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})


def make_session(path, providers: Sequence[str] | None = None, threads: int | None = None,
                 fp16: bool = False):
    ort = require_runtime("onnxruntime")
    available = ort.get_available_providers()
    wanted = [p for p in (providers or PROVIDER_PREFERENCE) if p in available] or ["CPUExecutionProvider"]
    provider_args: list = []
    for p in wanted:
        if p == "TensorrtExecutionProvider":
            # engines are cached beside nothing of the bundle's: a read-only volume stays read-only
            cache = os.environ.get("LLM2CLIP_TRT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                         "llm2clip", "trt")
            provider_args.append((p, {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True,
                                      "trt_engine_cache_path": cache}))
        else:
            provider_args.append(p)
    opts = ort.SessionOptions()
    # explicit thread counts: ORT's default grabs every core per session, and the service runs two
    opts.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=opts, providers=provider_args)
    log.info("ONNX Runtime session %s on %s", os.path.basename(str(path)), session.get_providers())
    return session


def _session_device(session) -> str:
    return "cuda" if GPU_PROVIDERS & set(session.get_providers()) else "cpu"


class OnnxImageEncoder(ImageEncoder):
    backend = "onnxruntime"

    def __init__(self, bundle: ModelBundle, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        self.bundle = bundle
        self.dim = bundle.embed_dim
        self.preprocess_cfg = bundle.preprocess
        self.session = make_session(bundle.image_onnx, providers, threads)
        self.device = _session_device(self.session)
        self._input = self.session.get_inputs()[0].name

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self._input: np.ascontiguousarray(pixels, dtype=np.float32)})[0]
        return l2_normalize(out)


class OnnxTextEncoder(TextEncoder):
    """One ONNX text encoder file of a bundle: ``precision`` names the variant (fp32, int8, fp16)."""

    backend = "onnxruntime"

    def __init__(self, bundle: ModelBundle, providers: Sequence[str] | None = None, threads: int | None = None,
                 precision: str = "fp32", *, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> None:
        variant = bundle.text_variants.get(precision)
        if variant is None or variant.get("runtime", "onnxruntime") != "onnxruntime":
            raise ValueError(f"bundle {bundle.path} has no ONNX text encoder of precision {precision!r}")
        self.bundle = bundle
        self.dim = bundle.embed_dim
        self.precision = precision
        self.tokenizer = bundle_tokenizer(bundle)
        self.session = make_session(bundle.path / variant["file"], providers, threads, fp16=precision == "fp16")
        self.device = _session_device(self.session)
        self.max_batch_tokens = max_batch_tokens
        # a variant whose embeddings depend on their batch mates (per-call activation scales) says so
        self.max_batch_size = min(max_batch_size, int(variant.get("max_batch_size") or max_batch_size))

    def encode_tokens(self, batch: TextBatch) -> np.ndarray:
        out = self.session.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})[0]
        return l2_normalize(out)


def bundle_tokenizer(bundle: ModelBundle) -> Tokenizer:
    return Tokenizer(bundle.tokenizer_dir, bundle.max_tokens,
                     add_special_tokens=bool(bundle.manifest["text"].get("add_special_tokens", False)))


def onnx_file(bundle: ModelBundle, precision: str) -> Path:
    return bundle.path / bundle.text_variants[precision]["file"]


def load_onnx_encoders(bundle: ModelBundle | str | os.PathLike, providers: Sequence[str] | None = None,
                       threads: int | None = None, verify: bool = True,
                       precision: str = "fp32") -> tuple[OnnxImageEncoder, OnnxTextEncoder]:
    """Both ONNX encoders of a bundle, the text one in ``precision`` (no check of the variant: callers that
    serve use ``llm2clip.encoders.load_encoders``, which refuses a variant that failed its check)."""
    from llm2clip.bundle import load_bundle

    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(os.fspath(bundle), verify=verify)
    return OnnxImageEncoder(bundle, providers, threads), OnnxTextEncoder(bundle, providers, threads, precision)
