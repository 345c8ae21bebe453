"""The models stage 1 trains: the base LLM (with its LM head for MNTP), and LoRA on its projections."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from llm2clip.errors import BundleError
from training.stage1.config import LORA_TARGETS, Stage1Cfg

log = logging.getLogger(__name__)

# the norms whose output only the projections of a decoder layer read (Llama, Mistral, Qwen2, Gemma naming)
NORMS_BEFORE_PROJECTIONS = ("input_layernorm", "post_attention_layernorm")


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

    targets: list[str] | str = lora_target_names(model, cfg.lora_targets)
    layers = top_layers(model, cfg.lora_layers)
    if layers is not None:
        # peft's layers_to_transform wants a prefix before "layers." that a bare LlamaModel's names lack
        targets = rf"(.*\.)?layers\.({'|'.join(map(str, layers))})\..*\.({'|'.join(targets)})"
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
    if cfg.bf16_weights and cfg.bf16:
        frozen_to_bf16(peft_model)
    if cfg.cast_once:
        cast_norms_once(peft_model)
    return peft_model


def top_layers(model: nn.Module, count: int) -> list[int] | None:
    """Indices of the top ``count`` transformer layers (None: every layer, ``count`` 0)."""
    if count <= 0:
        return None
    total = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if not total:
        raise BundleError("lora_layers needs a model whose config names num_hidden_layers: use lora_layers 0")
    if count > total:
        raise BundleError(f"lora_layers {count} is more than the model's {total} layers: use at most {total}")
    return list(range(total - count, total))


def frozen_to_bf16(peft_model: nn.Module) -> None:
    """The frozen weights of the LoRA-adapted projections in bf16, their float32 values kept aside.

    Under bf16 autocast every matmul rounds its float32 weight to bf16 on each call (a 4-byte read and a
    2-byte write of every weight, per forward); holding them in bf16 does it once, with the same rounding,
    so the products are the same. ``restore_frozen`` puts the float32 values back (before merging).
    """
    for module in peft_model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, nn.Linear) and base.weight.dtype == torch.float32 and not base.weight.requires_grad:
            base.fp32_weight = base.weight.data
            base.weight.data = base.weight.data.to(torch.bfloat16)


def restore_frozen(peft_model: nn.Module) -> None:
    """Undoes ``frozen_to_bf16``: the projections' float32 weights, exactly as they were."""
    for module in peft_model.modules():
        if hasattr(module, "fp32_weight"):
            module.weight.data = module.fp32_weight
            del module.fp32_weight


def _autocast_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    device = output.device.type
    return output.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else None


def cast_norms_once(peft_model: nn.Module) -> None:
    """Under autocast, each decoder layer's two norms hand their projections a bf16 output.

    The norms compute in float32 and autocast rounds their output to bf16 again in every projection that
    reads it, base and LoRA alike (q, k, v and their LoRA: 6 roundings of one tensor, and as many casts back in
    the backward pass). Rounding it once gives the projections the same input; the gradients of its readers
    then add up in bf16 rather than float32. peft's own cast of a LoRA input to the adapter's float32 is
    turned off: autocast would round it back. ``merge_lora`` removes the hooks.
    """
    hooks = [module.register_forward_hook(_autocast_output) for name, module in peft_model.named_modules()
             if name.endswith(NORMS_BEFORE_PROJECTIONS)]
    for module in peft_model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
    peft_model.stage1_hooks = hooks


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """The model with its LoRA merged into the float32 weights, activation checkpointing off."""
    for hook in getattr(peft_model, "stage1_hooks", []):
        hook.remove()
    restore_frozen(peft_model)
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


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights are: where its batches go."""
    return next(model.parameters()).device


def base_of(causal: nn.Module) -> nn.Module:
    """The transformer inside a causal-LM wrapper (``LlamaForCausalLM.model``)."""
    return getattr(causal, causal.base_model_prefix)
