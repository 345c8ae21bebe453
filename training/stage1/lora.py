"""The models stage 1 trains: the base LLM (with its LM head for MNTP), and LoRA on its projections."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from training.stage1.config import LORA_TARGETS, Stage1Cfg

log = logging.getLogger(__name__)


def lora_target_names(model: nn.Module, preferred: tuple[str, ...] = LORA_TARGETS) -> list[str]:
    """Leaf names of the model's Linear layers that LoRA adapts: the attention and MLP projections.

    Architectures that name them otherwise (Falcon's query_key_value, ...) get every Linear but the LM head.
    """
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, nn.Linear) and "lm_head" not in name}
    chosen = sorted(names & set(preferred))
    return chosen or sorted(names)


def add_lora(model: nn.Module, cfg: Stage1Cfg) -> nn.Module:
    """A peft model with fresh LoRA adapters on ``model``'s projections, set up to train."""
    from peft import LoraConfig, get_peft_model

    targets = lora_target_names(model, cfg.lora_targets)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none")
    with warnings.catch_warnings():
        # peft probes transformers' deprecated is_gradient_checkpointing; nothing for a user to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, lcfg)
    model.train()
    if cfg.grad_checkpointing:
        set_checkpointing(model, True)
        # peft freezes the embeddings; checkpointed blocks still need an input that carries grad
        model.enable_input_require_grads()
    return peft_model


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """The model with its LoRA merged into the weights, activation checkpointing off."""
    merged = peft_model.merge_and_unload()
    set_checkpointing(merged, False)
    return merged


def set_checkpointing(model: nn.Module, on: bool) -> None:
    # transformers 5.x renamed gradient_* to activation_* checkpointing; older 5.x only has the first
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def load_causal(base: Path, attn: str) -> nn.Module:
    """The base LLM with its LM head, which MNTP predicts tokens with."""
    from transformers import AutoModelForCausalLM

    cfg = json.loads((base / "config.json").read_text())
    if not any(a.endswith("ForCausalLM") for a in cfg.get("architectures") or []):
        log.warning("%s holds no LM head: MNTP predicts tokens with a freshly initialised (or tied) head", base)
    return AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, attn_implementation=attn)


def load_encoder_base(base: Path, attn: str) -> nn.Module:
    """The base LLM without a head: what the contrastive phase trains when there is no MNTP phase."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(base), dtype=torch.float32, attn_implementation=attn)


def base_of(causal: nn.Module) -> nn.Module:
    """The transformer inside a causal-LM wrapper (``LlamaForCausalLM.model``)."""
    return getattr(causal, causal.base_model_prefix)
