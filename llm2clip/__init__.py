"""LLM2CLIP core: models, bundles, encoders and data formats shared by every component."""

__version__ = "0.1.0"
