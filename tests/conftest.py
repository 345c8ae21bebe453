"""Shared fixtures: a tiny model bundle (random 2-layer LLM, ImageNet EfficientNet at 64 px, random heads;
the point is the code path; a random EfficientNet collapses every image to one vector) and a small
scene corpus. The real trained bundle for end-to-end tests lives in tests/e2e/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_llm, tiny_cfg

from llm2clip.model import LLM2CLIP
from llm2clip.text import LLMEncoder


@pytest.fixture(scope="session")
def load_script():
    """Import one of scripts/*.py (not a package) as a module: ``load_script("twin_significance")``."""
    import importlib.util

    root = Path(__file__).resolve().parents[1] / "scripts"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


@pytest.fixture(scope="session")
def tiny_model(tiny_llm_dir):
    torch.manual_seed(0)
    model = LLM2CLIP(tiny_cfg()).eval()
    llm = LLMEncoder.from_pretrained(tiny_llm_dir, attn="eager")
    return model, llm


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model, tiny_llm_dir) -> Path:
    """A real model bundle (ONNX encoders, tokenizer, manifest) of a tiny random model."""
    from training.export import export_bundle

    model, llm = tiny_model
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(model, llm, tiny_llm_dir, out)
    return out
