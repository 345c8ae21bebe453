"""Stage-1 checkpoints and output: resume a run from ``out/checkpoint/``, write the merged model.

``out/checkpoint/`` holds, per phase, the LoRA adapter (peft format), the optimizer, the step, the torch
RNG and the history, written every ``save_every`` steps and at the end of a phase; data order and view
choice are functions of (seed, step), so a rerun with the same ``out`` continues exactly where the
checkpoint stopped, and a rerun with more steps extends a finished run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm2clip.errors import BundleError
from training.stage1.config import Stage1Cfg
from training.stage1.lora import model_device

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")
# a rerun may change these without invalidating the checkpoint; anything else in the recipe must match
FREE = ("steps", "save_every", "bf16", "grad_checkpointing", "bf16_weights", "length_buckets",
        "cast_once", "fused_adam", "attention", "device")


def _replace_dir(tmp: Path, folder: Path) -> None:
    # swap in the new one only when complete: a run killed mid-save keeps the previous checkpoint
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


def save_phase(folder: Path, peft_model: nn.Module, opt: torch.optim.Optimizer, step: int, history: list,
               done: bool) -> None:
    """The phase's adapter and optimizer after ``step`` steps, with the torch RNG to go on from (and the CUDA
    device's, for a run there: LoRA dropout draws from it)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    peft_model.save_pretrained(str(tmp))
    device = model_device(peft_model)
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    torch.save({"step": step, "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": cuda_rng, "history": history, "done": done}, tmp / "state.pt")
    _replace_dir(tmp, folder)


def load_phase(folder: Path) -> dict[str, Any] | None:
    """The phase's saved state (step, optimizer, torch_rng, history, done, adapter folder); None if none."""
    path = folder / "state.pt"
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    state["adapter"] = folder
    return state


def load_adapter(peft_model: nn.Module, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(peft_model, load_file(str(folder / "adapter_model.safetensors")))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise BundleError(f"the LoRA adapter in {folder} does not fit the model ({unexpected[:3]}): "
                          "choose another output folder")


def reached(state: dict[str, Any] | None, steps: int) -> bool:
    return steps == 0 or (state is not None and state["step"] >= steps)


def check_recipe(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    """Refuses to resume a run whose recipe differs from the new one in anything but ``FREE``."""
    # a setting added after the run was made counts as its default there
    defaults = asdict(Stage1Cfg())
    old = {**{k: v for k, v in defaults.items() if k not in old and k != "lora_targets"}, **old}
    diff = sorted(k for k in set(old) | set(new) if k not in FREE and old.get(k) != new.get(k))
    if diff:
        raise BundleError(f"{out} holds a stage-1 run with another recipe ({', '.join(diff)} differ): rerun with "
                          "the same settings to resume, or choose another output folder")


def write_model(model: nn.Module, base: Path, out: Path, name: str) -> None:
    """``model`` as a Hugging Face folder in ``out`` (replacing earlier weights), with the base's tokenizer."""
    tmp = out / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.config._model_name_or_path = name
    model.save_pretrained(str(tmp))
    for old in out.iterdir():
        if old.is_file() and (old.suffix in {".safetensors", ".bin"} or old.name.endswith(".index.json")):
            old.unlink()
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    for fname in TOKENIZER_FILES:
        if (base / fname).is_file():
            shutil.copy2(base / fname, out / fname)
