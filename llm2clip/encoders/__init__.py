"""Runtime backends behind one interface: pre (preprocess / tokenize), core (run), post (normalize).

ONNX Runtime (``onnx``) serves bundles; PyTorch (``torch_backend``) embeds with a Hugging Face LLM folder in
training and serves a bundle's bf16 variant. ``select`` picks a bundle's text encoder variant for the machine.
"""

from llm2clip.encoders.base import BatchLimits, ImageEncoder, TextBatch, TextEncoder, pad_batch, plan_batches
from llm2clip.encoders.onnx import OnnxImageEncoder, OnnxTextEncoder, load_onnx_encoders
from llm2clip.encoders.select import (
    choose_text_precision,
    load_encoders,
    load_image_encoder,
    load_text_encoder,
)

__all__ = [
    "BatchLimits",
    "ImageEncoder",
    "OnnxImageEncoder",
    "OnnxTextEncoder",
    "TextBatch",
    "TextEncoder",
    "choose_text_precision",
    "load_encoders",
    "load_image_encoder",
    "load_onnx_encoders",
    "load_text_encoder",
    "pad_batch",
    "plan_batches",
]
