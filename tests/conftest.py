"""Shared fixtures: a tiny model bundle (random 2-layer LLM, ImageNet EfficientNet at 64 px, random heads;
the point is the code path; a random EfficientNet collapses every image to one vector) and a small
scene corpus. The real trained bundle for end-to-end tests lives in tests/e2e/conftest.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from llm2clip.config import AdapterCfg, ModelCfg, PreprocessCfg, TextCfg, VisionCfg
from llm2clip.defaults import smollm2_dir
from llm2clip.model import LLM2CLIP
from llm2clip.text import LLMEncoder

TINY_IMAGE = 64


def make_tiny_llm(folder: Path, seed: int = 0) -> Path:
    """A 2-layer random Llama with the real SmolLM2 tokenizer, saved as a Hugging Face folder."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=2, bos_token_id=1, eos_token_id=2)
    LlamaModel(cfg).save_pretrained(folder)
    src = smollm2_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, folder / name)
    return folder


def tiny_cfg() -> ModelCfg:
    return ModelCfg(
        embed_dim=32,
        vision=VisionCfg(pretrained=True, image_size=TINY_IMAGE, pool_width=32, pool_heads=2),
        adapter=AdapterCfg(in_dim=64, blocks=2, expansion=2),
        text=TextCfg(llm="tiny-llama", max_tokens=512),
        preprocess=PreprocessCfg(size=TINY_IMAGE),
    )


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
