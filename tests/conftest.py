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
    from training.config import ExportCfg
    from training.export import export_bundle

    model, llm = tiny_model
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(model, llm, tiny_llm_dir, out, cfg=ExportCfg(precisions=("fp32",)))
    return out


@pytest.fixture(scope="session")
def check_scenes(tmp_path_factory) -> Path:
    """24 held-out scenes: what export checks precision variants on in tests."""
    from llm2clip.data import generate_scenes

    out = tmp_path_factory.mktemp("check") / "val"
    generate_scenes(out, 24, "val", 11, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_bundle_variants(tmp_path_factory, tiny_model, tiny_llm_dir, check_scenes) -> Path:
    """The tiny model with its int8 (ONNX Runtime) and bf16 (torch) text encoders, checked against fp32.
    R@1 of a random model on 24 scenes moves by 4 points per caption, so only the cosine thresholds bind."""
    from training.config import ExportCfg
    from training.export import export_bundle
    from training.variants import CheckThresholds

    model, llm = tiny_model
    out = tmp_path_factory.mktemp("bundles") / "tiny-variants"
    export_bundle(model, llm, tiny_llm_dir, out, cfg=ExportCfg(
        precisions=("fp32", "int8", "bf16"), check_data=check_scenes, thresholds=CheckThresholds(max_r1_drop=1.0),
        progress=False))
    return out
