"""ONNX Runtime backend: reads only the model bundle (ONNX files, tokenizer, manifest)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from llm2clip.bundle import ModelBundle, load_bundle
from llm2clip.encoders.base import ImageEncoder, TextBatch, TextEncoder, l2_normalize
from llm2clip.tokenizer import Tokenizer

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def make_session(path, providers: Sequence[str] | None = None, threads: int | None = None):
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [p for p in (providers or PROVIDER_PREFERENCE) if p in available] or ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    # explicit thread counts: ORT's default grabs every core per session, and the service runs two
    opts.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
    log.info("ONNX Runtime session %s on %s", os.path.basename(str(path)), session.get_providers())
    return session


class OnnxImageEncoder(ImageEncoder):
    def __init__(self, bundle: ModelBundle, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        self.bundle = bundle
        self.dim = bundle.embed_dim
        self.preprocess_cfg = bundle.preprocess
        self.session = make_session(bundle.image_onnx, providers, threads)
        self._input = self.session.get_inputs()[0].name

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self._input: np.ascontiguousarray(pixels, dtype=np.float32)})[0]
        return l2_normalize(out)


class OnnxTextEncoder(TextEncoder):
    def __init__(self, bundle: ModelBundle, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        self.bundle = bundle
        self.dim = bundle.embed_dim
        self.tokenizer = Tokenizer(bundle.tokenizer_dir, bundle.max_tokens,
                                   add_special_tokens=bool(bundle.manifest["text"].get("add_special_tokens", False)))
        self.session = make_session(bundle.text_onnx, providers, threads)

    def encode_tokens(self, batch: TextBatch) -> np.ndarray:
        out = self.session.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})[0]
        return l2_normalize(out)


def load_onnx_encoders(
    bundle: ModelBundle | str | os.PathLike,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    verify: bool = True,
) -> tuple[OnnxImageEncoder, OnnxTextEncoder]:
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(os.fspath(bundle), verify=verify)
    return OnnxImageEncoder(bundle, providers, threads), OnnxTextEncoder(bundle, providers, threads)
