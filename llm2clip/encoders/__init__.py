"""Runtime backends behind one interface: pre (preprocess / tokenize), core (run), post (normalize)."""

from llm2clip.encoders.base import ImageEncoder, TextBatch, TextEncoder
from llm2clip.encoders.onnx import OnnxImageEncoder, OnnxTextEncoder, load_onnx_encoders

__all__ = [
    "ImageEncoder",
    "OnnxImageEncoder",
    "OnnxTextEncoder",
    "TextBatch",
    "TextEncoder",
    "load_onnx_encoders",
]
