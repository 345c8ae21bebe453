"""``train_text``: one stage-1 run, opened (or resumed) in its output folder, phase after phase.

The MNTP LoRA is merged before the contrastive LoRA starts, as LLM2Vec does. The output is the base model
class (e.g. ``LlamaModel``, no LM head): an encoder never needs the head.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm2clip.data import Dataset, read_dataset
from llm2clip.errors import BundleError, DatasetError
from llm2clip.text import LLMEncoder, Tokenizer
from training.caption_retrieval import caption_retrieval_of, folder_encoder
from training.embed import text_encoder_info
from training.stage1.batches import ContrastiveLoss, MntpLoss
from training.stage1.checkpoint import check_recipe, load_phase, reached, write_model
from training.stage1.config import ATTENTIONS, FORMAT, PHASES, SUMMARY, Stage1Cfg
from training.stage1.loop import Phase, Run, resolve_device, run_phase
from training.stage1.lora import add_lora, base_of, load_causal, load_encoder_base, merge_lora
from training.stage1.losses import mask_token_id
from training.stage1.views import load_views

log = logging.getLogger(__name__)

State = dict[str, Any] | None


def _phase_summary(history: list[dict[str, Any]], total: int) -> dict[str, Any] | None:
    if not history:
        return None
    rates = [h["samples_s"] for h in history]
    k = max(1, min(10, len(history) // 5))
    return {"steps": total, "first_loss": round(float(np.mean([h["loss"] for h in history[:k]])), 5),
            "last_loss": round(float(np.mean([h["loss"] for h in history[-k:]])), 5),
            "samples_s": round(float(np.median(rates)), 2)}


class _Trainer:
    """One call of ``train_text``: opens or resumes the run in ``run.out``, trains its phases, writes the
    merged model and the summary."""

    def __init__(self, run: Run, base: Path, dataset: Dataset, val: Dataset | None) -> None:
        self.run, self.base, self.ds, self.val = run, base, dataset, val
        self.t_start = time.perf_counter()
        self.base_info = text_encoder_info(base)
        cfg = run.cfg
        self.recipe = {**asdict(cfg), "lora_targets": list(cfg.lora_targets), "base": self.base_info["fingerprint"],
                       "dataset": str(Path(dataset.root).resolve()), "items": len(dataset)}
        self.steps_run = dict.fromkeys(PHASES, 0)
        self.tok = Tokenizer(base, cfg.max_tokens)

    def train(self) -> dict[str, Any]:
        cfg, out = self.run.cfg, self.run.out
        record = self._open()
        # the LoRA initialisation (and the LM head of a base without one) draw from it
        torch.manual_seed(cfg.seed)
        states = {name: load_phase(self.run.ckpt / name) for name in PHASES}
        done = reached(states["mntp"], cfg.mntp_steps) and reached(states["contrastive"], cfg.steps)
        if done and (out / SUMMARY).is_file():
            log.info("%s is already trained for %d contrastive steps", out, cfg.steps)
            return json.loads((out / SUMMARY).read_text())
        device = self.run.device
        model = self._mntp(states) if cfg.mntp_steps > 0 else load_encoder_base(self.base, cfg.attention).to(device)
        merged = self._contrastive(model, states["contrastive"])
        write_model(merged.cpu().eval(), self.base, out, f"{self.base_info['name']}-llm2clip-cc")
        del model, merged
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the validation loads the written model again
        self.run.write_histories()
        summary = self._summary(record, states)
        (out / SUMMARY).write_text(json.dumps(summary, indent=2))
        return summary

    def _open(self) -> dict[str, Any]:
        """Checks that a checkpoint already in ``out`` has this recipe, reads or builds the caption pools, and
        records the run (recipe, base, validation before training) in ``checkpoint/run.json``."""
        ckpt, out = self.run.ckpt, self.run.out
        run_file = ckpt / "run.json"
        record: dict[str, Any] = {}
        if run_file.is_file():
            record = json.loads(run_file.read_text())
            check_recipe(record["recipe"], self.recipe, out)
        elif out.exists() and any(out.iterdir()):
            raise BundleError(f"{out} is not empty and holds no stage-1 checkpoint: choose an empty or new "
                              "output folder")
        ckpt.mkdir(parents=True, exist_ok=True)
        record["recipe"] = self.recipe
        record["base"] = self.base_info
        self.views = load_views(ckpt, self.ds, self.run.cfg, self.run.progress)
        if self.val is not None and "val_before" not in record:
            record["val_before"] = self._val(self.base)
        run_file.write_text(json.dumps(record, indent=2))
        return record

    def _mntp(self, states: dict[str, State]) -> nn.Module:
        """The MNTP phase on the causal LM; -> its transformer with the LoRA merged (no LM head)."""
        cfg, state = self.run.cfg, states["mntp"]
        if states["contrastive"] is not None and (state is None or not state["done"]):
            raise BundleError(f"{self.run.ckpt} has contrastive training without a finished MNTP phase: choose "
                              "another output folder")
        causal = load_causal(self.base, cfg.attention).to(self.run.device)
        LLMEncoder(base_of(causal))  # bidirectional attention for MNTP as well
        peft_model = add_lora(causal, cfg)
        sampler = self.views.sampler(cfg.batch_size, cfg.seed, stream=1)
        loss = MntpLoss(causal, self.tok, sampler, mask_token_id(self.base, self.tok), cfg)
        phase = Phase("mntp", cfg.mntp_steps, cfg.mntp_lr, loss)
        self.steps_run["mntp"] = run_phase(self.run, phase, peft_model, state)
        merged = merge_lora(peft_model)
        merged.lm_head = None  # the encoder never needs it; frees the vocabulary projection if untied
        return base_of(merged)

    def _contrastive(self, model: nn.Module, state: State) -> nn.Module:
        """The contrastive phase on ``model``; -> the model with the LoRA merged."""
        cfg = self.run.cfg
        enc = LLMEncoder(model)
        peft_model = add_lora(model, cfg)
        sampler = self.views.sampler(cfg.batch_size, cfg.seed, stream=0)
        loss = ContrastiveLoss(enc, self.tok, sampler, cfg.temperature, cfg.length_buckets)
        phase = Phase("contrastive", cfg.steps, cfg.lr, loss)
        self.steps_run["contrastive"] = run_phase(self.run, phase, peft_model, state)
        return merge_lora(peft_model)

    def _val(self, folder: Path) -> dict[str, Any]:
        """Caption retrieval on the validation set of the text encoder in ``folder``, on the run's device."""
        encoder = folder_encoder(folder, self.run.cfg.max_tokens, prefix=self.run.prefix, device=str(self.run.device))
        return caption_retrieval_of(encoder, self.val, self.run.progress)

    def _summary(self, record: dict[str, Any], states: dict[str, State]) -> dict[str, Any]:
        cfg, pools, val = self.run.cfg, self.views.pools, self.val
        val_after = None if val is None else self._val(self.run.out)
        return {
            "format": FORMAT,
            "base": self.base_info,
            "recipe": {k: v for k, v in self.recipe.items() if k not in ("base", "dataset", "items")},
            "train": {"dataset": self.recipe["dataset"], "items": len(self.ds),
                      "usable": sum(len(p) >= 2 for p in pools),
                      "views_per_item": round(float(np.mean([len(p) for p in pools])), 3)},
            "mntp": _phase_summary(self.run.histories["mntp"], cfg.mntp_steps),
            "contrastive": _phase_summary(self.run.histories["contrastive"], cfg.steps),
            "mask_token_id": mask_token_id(self.base, self.tok) if cfg.mntp_steps else None,
            "val": None if val is None else {"dataset": str(val.root), "before": record.get("val_before"),
                                             "after": val_after},
            "resumed_from": {name: state["step"] if state else 0 for name, state in states.items()},
            "steps_run": self.steps_run,
            "device": str(self.run.device),
            "seconds": round(time.perf_counter() - self.t_start, 1),
        }


def train_text(
    dataset: Dataset | str | Path,
    out: str | Path,
    base: str | Path | None = None,
    cfg: Stage1Cfg | None = None,
    val: Dataset | str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) stage 1 into ``out``: a Hugging Face model folder with the LoRA merged, + ``stage1.json``."""
    return train_text_run(Run(cfg or Stage1Cfg(), Path(out), progress), dataset, base, val)


def train_text_run(run: Run, dataset: Dataset | str | Path, base: str | Path | None = None,
                   val: Dataset | str | Path | None = None) -> dict[str, Any]:
    """``train_text`` for a ``Run`` made by the caller (which may share the base's first layers: ``Run.prefix``)."""
    cfg = run.cfg
    if cfg.batch_size < 2 and cfg.steps > 0:
        raise DatasetError("the batch size must be at least 2: a contrastive problem needs negatives")
    if cfg.attention not in ATTENTIONS:
        raise DatasetError(f"unknown attention {cfg.attention!r}: choose among {', '.join(ATTENTIONS)}")
    if base is None:
        from llm2clip.defaults import smollm2_dir

        base = smollm2_dir()
    run.device = resolve_device(cfg.device)
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    val_ds = None if val is None else val if isinstance(val, Dataset) else read_dataset(val)
    return _Trainer(run, Path(base), ds, val_ds).train()
