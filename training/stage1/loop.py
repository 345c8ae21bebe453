"""The optimizer loop of a stage-1 phase: AdamW with warmup and cosine decay, gradient accumulation,
clipping, a history entry per step and a checkpoint every ``save_every`` steps."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from llm2clip.errors import DatasetError
from training.schedule import lr_factor
from training.stage1.checkpoint import load_adapter, save_phase
from training.stage1.config import CHECKPOINT, HISTORY, PHASES, Stage1Cfg


def resolve_device(name: str | None) -> torch.device:
    """``Stage1Cfg.device`` as a torch device: None is CUDA when torch sees one, else the CPU."""
    if name is None:
        from llm2clip.encoders.torch_backend import torch_device

        return torch.device(torch_device(None))
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise DatasetError(f"unknown device {name!r}: choose cpu, cuda or cuda:N (or leave it out: CUDA when present)")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DatasetError(f"device {name!r} asked for, but torch sees no CUDA device: use --device cpu")
        if device.index is not None and device.index >= count:
            raise DatasetError(f"device {name!r} asked for, but torch sees {count} CUDA device(s): "
                               f"choose cuda:0 .. cuda:{count - 1}")
    return device


@dataclass
class Run:
    """One stage-1 run: its recipe, its output folder, and the loss history of each phase so far."""

    cfg: Stage1Cfg
    out: Path
    progress: bool = True
    # states of the base's first layers shared with other models (llm2clip.encoders.prefix_states): the val
    # caption retrieval before and after training, where the LoRA leaves those layers as they are
    prefix: Any = None
    # where the model and its batches are (``resolve_device(cfg.device)``, set when the run opens)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    histories: dict[str, list] = field(default_factory=lambda: {name: [] for name in PHASES})

    @property
    def ckpt(self) -> Path:
        return self.out / CHECKPOINT

    def write_histories(self) -> None:
        (self.out / HISTORY).write_text(json.dumps(self.histories, indent=1))


@dataclass
class Phase:
    """Optimizer steps up to ``total`` at peak learning rate ``lr``; ``loss(m)`` is micro-batch m's loss."""

    name: str
    total: int
    lr: float
    loss: Callable[[int], torch.Tensor]


def _optimizer(run: Run, phase: Phase, peft_model: nn.Module,
               state: dict[str, Any] | None) -> tuple[torch.optim.AdamW, int]:
    """AdamW over the trainable (LoRA) parameters, with the adapter, optimizer and RNG of ``state``
    restored; -> (optimizer, the step to go on from). Sets the phase's history in ``run``."""
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=run.cfg.weight_decay, fused=run.cfg.fused_adam or None)
    step, history = 0, []
    if state is not None:
        load_adapter(peft_model, state["adapter"])
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and run.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], run.device)
    run.histories[phase.name] = history
    return opt, step


def _step(run: Run, phase: Phase, opt: torch.optim.AdamW, step: int) -> dict[str, Any]:
    """Optimizer step ``step`` (from 0) over ``grad_accum`` micro-batches; -> its history entry."""
    cfg = run.cfg
    t0 = time.perf_counter()
    for g in opt.param_groups:
        g["lr"] = phase.lr * lr_factor(step, phase.total, cfg.warmup_steps)
    opt.zero_grad(set_to_none=True)
    losses = []
    for a in range(cfg.grad_accum):
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = phase.loss(step * cfg.grad_accum + a)
        (loss / cfg.grad_accum).backward()
        losses.append(float(loss.detach()))
    params = [p for g in opt.param_groups for p in g["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    opt.step()
    rate = 2 * cfg.batch_size * cfg.grad_accum / (time.perf_counter() - t0)
    return {"step": step + 1, "loss": round(float(np.mean(losses)), 5), "lr": opt.param_groups[0]["lr"],
            "grad_norm": round(grad_norm, 4), "samples_s": round(rate, 2)}


def run_phase(run: Run, phase: Phase, peft_model: nn.Module, state: dict[str, Any] | None) -> int:
    """Optimizer steps ``state.step .. phase.total``, checkpointed in ``run.ckpt / phase.name``; returns the
    number of steps run."""
    opt, step = _optimizer(run, phase, peft_model, state)
    start = step
    if step >= phase.total:
        return 0
    history = run.histories[phase.name]
    bar = tqdm(total=phase.total, initial=step, desc=f"stage 1 {phase.name}", unit="step", disable=not run.progress)
    while step < phase.total:
        entry = _step(run, phase, opt, step)
        step += 1
        history.append(entry)
        bar.update(1)
        bar.set_postfix(loss=f"{entry['loss']:.4f}", samples_s=f"{entry['samples_s']:.1f}")
        if step % run.cfg.save_every == 0 or step == phase.total:
            save_phase(run.ckpt / phase.name, peft_model, opt, step, history, done=step == phase.total)
            run.write_histories()
    bar.close()
    return step - start

