"""Stage-2 checkpoints: config.json (ModelCfg) + model.safetensors + train_state.pt, resumable.

The frozen LLM is not copied into each checkpoint: ``text_encoder.json`` names its folder and
fingerprint, so export and eval find it and notice when it changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llm2clip.config import ModelCfg
from llm2clip.errors import BundleError
from llm2clip.model import LLM2CLIP

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "train_state.pt"
TEXT_ENCODER = "text_encoder.json"


def save_checkpoint(
    folder: str | Path,
    model: LLM2CLIP,
    text_encoder: dict[str, Any],
    state: dict[str, Any] | None = None,
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.cfg.save(folder / CONFIG)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # write then rename: a run killed mid-save keeps its previous checkpoint
    save_file(tensors, str(folder / (WEIGHTS + ".tmp")))
    os.replace(folder / (WEIGHTS + ".tmp"), folder / WEIGHTS)
    (folder / TEXT_ENCODER).write_text(json.dumps(text_encoder, indent=2) + "\n")
    if state is not None:
        torch.save(state, folder / (STATE + ".tmp"))
        os.replace(folder / (STATE + ".tmp"), folder / STATE)
    return folder


def is_checkpoint(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()


def load_checkpoint(folder: str | Path) -> tuple[LLM2CLIP, dict[str, Any]]:
    folder = Path(folder)
    if not is_checkpoint(folder):
        raise BundleError(f"{folder} is not a stage-2 checkpoint (needs {CONFIG} and {WEIGHTS}); train one with "
                          "`llm2clip train clip`")
    cfg = ModelCfg.load(folder / CONFIG)
    cfg.vision.pretrained = False  # the checkpoint carries the trained weights
    model = LLM2CLIP(cfg)
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    text = json.loads((folder / TEXT_ENCODER).read_text()) if (folder / TEXT_ENCODER).is_file() else {}
    return model.eval(), text


def load_state(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / STATE
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None
