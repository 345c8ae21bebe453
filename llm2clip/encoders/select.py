"""Choosing a bundle's text encoder variant: by a setting, or by what the machine can run fast.

A variant other than fp32 carries the check export made of it (cosine to fp32, R@1 against fp32 on a
held-out set). A variant whose check failed, or that was never checked, is never chosen: asked for by
name it is refused with the reason; under ``auto`` it is skipped with a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict

from llm2clip.bundle import ModelBundle, load_bundle
from llm2clip.encoders.base import BatchLimits, ImageEncoder, TextEncoder
from llm2clip.encoders.capability import PRECISIONS, Capabilities, preferred_precisions, probe
from llm2clip.errors import BundleError

log = logging.getLogger(__name__)

AUTO = "auto"


def variant_problem(bundle: ModelBundle, precision: str, caps: Capabilities | None = None) -> str | None:
    """Why ``precision`` cannot be used from ``bundle`` on this machine; None when it can."""
    variant = bundle.text_variants.get(precision)
    if variant is None:
        have = ", ".join(sorted(bundle.text_variants))
        return f"the bundle has no {precision} text encoder (it has {have}); re-export it with that precision"
    runtime = variant.get("runtime", "onnxruntime")
    if runtime == "torch" and caps is not None and not caps.torch_installed:
        return f"the {precision} text encoder runs on torch, which is not installed (pip install torch)"
    if precision == "fp16" and caps is not None and not caps.cuda:
        return "fp16 runs on a CUDA device only, and none is present"
    if precision == "fp32":
        return None  # the reference every check compares against
    check = variant.get("check")
    if not check:
        return f"the {precision} text encoder was never checked against fp32; re-export the bundle"
    if not check.get("passed"):
        return f"the {precision} text encoder failed its check against fp32 at export: {check.get('reason', '?')}"
    return None


def choose_text_precision(bundle: ModelBundle, precision: str = AUTO, caps: Capabilities | None = None) -> str:
    """The precision to serve ``bundle`` in. ``auto``: the first usable one in the probe's preference order.
    Raises BundleError for a named precision that cannot be used, saying why."""
    if precision != AUTO:
        if precision not in PRECISIONS:
            raise BundleError(f"unknown precision {precision!r}: choose one of auto, {', '.join(PRECISIONS)}")
        problem = variant_problem(bundle, precision, caps or probe(torch_cuda=precision in ("bf16", "fp16")))
        if problem:
            raise BundleError(f"cannot serve {bundle.path} in {precision}: {problem}")
        return precision
    needs_torch = any(v.get("runtime") == "torch" for v in bundle.text_variants.values())
    caps = caps or probe(torch_cuda=needs_torch)
    for candidate in preferred_precisions(caps):
        problem = variant_problem(bundle, candidate, caps)
        if problem is None:
            return candidate
        if candidate in bundle.text_variants:
            log.warning("not using the %s text encoder: %s", candidate, problem)
    return "fp32"


def load_text_encoder(bundle: ModelBundle | str, precision: str = AUTO, *,
                      providers: Sequence[str] | None = None, threads: int | None = None,
                      limits: BatchLimits = BatchLimits()) -> TextEncoder:
    """The bundle's text encoder in ``precision`` (or the best one for this machine), on its runtime."""
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    chosen = choose_text_precision(bundle, precision)
    variant = bundle.text_variants[chosen]
    batching = asdict(limits)
    encoder: TextEncoder
    if variant.get("runtime", "onnxruntime") == "torch":
        from llm2clip.encoders.torch_backend import TorchTextEncoder

        encoder = TorchTextEncoder.from_bundle(bundle, chosen, threads=threads, **batching)
    else:
        from llm2clip.encoders.onnx import OnnxTextEncoder

        encoder = OnnxTextEncoder(bundle, providers, threads, chosen, **batching)
    log.info("text encoder: %s on %s (%s), asked for %s; machine %s", chosen, encoder.backend, encoder.device,
             precision, probe().summary())
    return encoder


def load_image_encoder(bundle: ModelBundle | str, *, providers: Sequence[str] | None = None,
                       threads: int | None = None) -> ImageEncoder:
    from llm2clip.encoders.onnx import OnnxImageEncoder

    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    return OnnxImageEncoder(bundle, providers, threads)


def load_encoders(bundle: ModelBundle | str, precision: str = AUTO, *, providers: Sequence[str] | None = None,
                  threads: int | None = None, verify: bool = True,
                  limits: BatchLimits = BatchLimits()) -> tuple[ImageEncoder, TextEncoder]:
    """Both encoders of a bundle: the image encoder (ONNX fp32) and the text encoder in ``precision``."""
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle, verify=verify)
    return (load_image_encoder(bundle, providers=providers, threads=threads),
            load_text_encoder(bundle, precision, providers=providers, threads=threads, limits=limits))
