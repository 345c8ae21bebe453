"""A tiny model for tests where the point is the code path: a random 2-layer Llama with the real SmolLM2
tokenizer, and the ImageNet EfficientNet-Lite0 at 64 px (a random EfficientNet collapses every image to
one vector) under random heads."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from llm2clip.config import AdapterCfg, ModelCfg, PreprocessCfg, TextCfg, VisionCfg
from llm2clip.defaults import smollm2_dir

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
