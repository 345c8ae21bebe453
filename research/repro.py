"""`llm2clip repro`: the paper's ablation rows on the scene corpus, same vision tower, data, steps, seed.

Rows (each writes DIR/<row>/ckpt and DIR/<row>/bundle, and is evaluated on the test split):
  clip77    a CLIP text transformer with a 77-token context, trained from scratch jointly (vanilla CLIP)
  minilm    all-MiniLM-L6-v2 mean pooled + adapter (the paper's BERT-type row)
  llm_nocc  SmolLM2-135M, bidirectional + mean pooled, no caption-contrastive fine-tuning
  llm_cc    SmolLM2-135M after stage 1 (LLM2CLIP)
Also: caption retrieval accuracy of each text encoder on the test split (before/after stage 1), and
stage-2 samples/s with precomputed caption embeddings against running the LLM online.
Every step is cached in DIR, so an interrupted run continues, and `--rows` runs a subset.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm2clip.config import AdapterCfg, ClipTextCfg, TextCfg
from llm2clip.data import Dataset, generate_scenes, read_dataset
from llm2clip.defaults import minilm_dir, smollm2_dir
from llm2clip.errors import LLM2CLIPError
from research.fact_probe import probe_caption_embeddings
from research.report import write_report
from research.repro_config import ROWS, ReproCfg, stage2_cfg
from training.caption_retrieval import caption_retrieval, embed_texts, paraphrase_twin_accuracy
from training.clip import Stage2Run, default_model_cfg, load_images, normalize, train_clip
from training.clip_recipe import clip_loss
from training.config import ExportCfg, TrainCfg
from training.embed import CaptionEmbeddings, embed_captions
from training.eval import evaluate
from training.export import export_checkpoint
from training.stage1.config import Stage1Cfg
from training.stage1.train import train_text


def _say(msg: str) -> None:
    sys.stderr.write(f"[repro] {msg}\n")
    sys.stderr.flush()


def _cached_json(path: Path, fn: Callable[[], Any]) -> Any:
    if path.is_file():
        return json.loads(path.read_text())
    value = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True))
    return value


def _data(out: Path, cfg: ReproCfg) -> dict[str, Path]:
    paths = {s: out / "data" / s for s in ("train", "val", "test")}
    sizes = {"train": cfg.train_scenes, "val": cfg.val_scenes, "test": cfg.test_scenes}
    for split, path in paths.items():
        if not (path / "items.jsonl").is_file():
            _say(f"scenes: {split} ({sizes[split]})")
            generate_scenes(path, sizes[split], split, cfg.seed + {"train": 0, "val": 1, "test": 2}[split])
    return paths


def stage2_throughput(dataset: Dataset, llm_dir: Path, emb_dir: Path, cfg: ReproCfg) -> dict[str, float]:
    """Samples/s of a stage-2 step with precomputed embeddings vs with the frozen LLM run in the step."""
    from llm2clip.encoders.torch_backend import TorchTextEncoder
    from llm2clip.model import LLM2CLIP

    caps = CaptionEmbeddings(emb_dir)
    model_cfg = default_model_cfg(cfg.embed_dim, caps.dim, cfg.image_size, "llm", TextCfg.max_tokens)
    torch.manual_seed(cfg.seed)
    model = LLM2CLIP(model_cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    n = min(cfg.batch_size, len(dataset))
    items = dataset.items[:n]
    images = torch.from_numpy(load_images(dataset, model_cfg.preprocess, progress=False)[:n])
    llm = TorchTextEncoder.from_folder(llm_dir, TextCfg.max_tokens, precision="bf16", normalize=False)
    rates = {}
    for mode in ("precomputed", "online"):
        times = []
        for _ in range(cfg.throughput_steps + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if mode == "precomputed":
                    text = torch.stack([caps.get(it.id, "long") for it in items]).float()
                else:
                    text = torch.from_numpy(llm.encode([it.long for it in items]))
                img = model.encode_image(normalize(images, model_cfg.preprocess))
                txt = model.encode_text_embedding(text.float())
            loss = clip_loss(img.float(), txt.float(), model.logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        rates[mode] = n / float(np.median(times[1:]))  # the first step warms up
    rates["speedup"] = rates["precomputed"] / rates["online"]
    return {k: round(v, 2) for k, v in rates.items()}


def bundle_text_twins(bundle: Path, test: Dataset) -> dict[str, Any] | None:
    """The paraphrase near-twin probe through a row's exported text encoder (LLM or text tower + adapter)."""
    from llm2clip.bundle import load_bundle
    from llm2clip.encoders.onnx import load_onnx_encoders

    _, txt = load_onnx_encoders(load_bundle(bundle))
    return paraphrase_twin_accuracy(txt.encode, test)


def _text_encoders(out: Path, cfg: ReproCfg, rows: tuple[str, ...], train: Dataset,
                   val: Dataset) -> dict[str, Path]:
    """The frozen text encoder of each row asked for that has one; runs stage 1 (cached) for llm_cc.
    A subset run measures only its own encoders; stage 1's before/after on the val split is in the report
    whenever llm_cc runs."""
    encoders: dict[str, Path] = {"llm_nocc": smollm2_dir()} if "llm_nocc" in rows else {}
    if "minilm" in rows:
        encoders["minilm"] = minilm_dir()
    if "llm_cc" in rows:
        s1 = Stage1Cfg(steps=cfg.stage1_steps, mntp_steps=cfg.stage1_mntp_steps, batch_size=cfg.stage1_batch,
                       paraphrases=cfg.stage1_paraphrases, positives=cfg.stage1_positives,
                       hard_negatives=cfg.stage1_hard_negatives, seed=cfg.seed,
                       warmup_steps=max(1, cfg.stage1_steps // 10),
                       # SmolLM2 at 8 scenes (+ twins) holds its activations in ~6 GB: recomputing them
                       # would cost ~30% more time for memory this machine has
                       grad_checkpointing=False)
        if not (out / "stage1" / "stage1.json").is_file():
            _say(f"stage 1: caption-contrastive fine-tuning, {cfg.stage1_steps} steps")
        train_text(train, out / "stage1", smollm2_dir(), s1, val=val)
        encoders["llm_cc"] = out / "stage1"
    return encoders


def _text_side(out: Path, encoders: dict[str, Path], test: Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each raw text encoder alone on the test split: caption retrieval accuracy and the near-twin probe."""
    _say("caption retrieval accuracy of the text encoders (test split)")
    caption_acc = {name: _cached_json(out / "caption_retrieval" / f"{name}.json",
                                      lambda d=d: caption_retrieval(d, test))
                   for name, d in encoders.items()}
    _say("near twins, text side only: paraphrase of a closer to a than to its twin (raw text encoders)")
    text_twins = {name: _cached_json(out / "caption_retrieval" / f"{name}_twins.json",
                                     lambda d=d: paraphrase_twin_accuracy(
                                         lambda t, d=d: embed_texts(d, t, progress=False), test))
                  for name, d in encoders.items()}
    return caption_acc, text_twins


@dataclass
class _Run:
    """What every row of one invocation shares."""

    out: Path
    cfg: ReproCfg
    train: Dataset
    test: Dataset
    test_dir: Path
    encoders: dict[str, Path]
    tcfg: TrainCfg


def _train_row(run: _Run, row: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Stage 2 of one row: its training summary and the fact probe of its frozen caption embeddings
    (None for clip77: its text side is trained jointly, nothing frozen to probe)."""
    cfg, rdir = run.cfg, run.out / row
    if row == "clip77":
        # the adapter's input width is unused: the text tower replaces the LLM and the adapter
        mcfg = default_model_cfg(cfg.embed_dim, AdapterCfg.in_dim, cfg.image_size, "clip77", 77)
        mcfg.text_tower = ClipTextCfg(context=77, width=cfg.clip77_width, layers=cfg.clip77_layers,
                                      heads=max(1, cfg.clip77_width // 64))
        _say(f"{row}: stage 2 (text tower trained jointly)")
        return train_clip(Stage2Run(run.train, None, rdir / "ckpt", model_cfg=mcfg, tokenizer_dir=smollm2_dir()),
                          run.tcfg), None
    emb = run.out / "embeddings" / row
    _say(f"{row}: caption embeddings")
    embed_captions(run.train, run.encoders[row], emb)
    caps = CaptionEmbeddings(emb)  # read once: the probe and the model's text width
    facts = _cached_json(rdir / "fact_probe.json", lambda: probe_caption_embeddings(caps, run.train))
    mcfg = default_model_cfg(cfg.embed_dim, caps.dim, cfg.image_size, row, TextCfg.max_tokens)
    _say(f"{row}: stage 2")
    return train_clip(Stage2Run(run.train, emb, rdir / "ckpt", model_cfg=mcfg), run.tcfg), facts


def _run_row(run: _Run, row: str) -> dict[str, Any]:
    """One row end to end: stage 2, export, evaluation on the test split, the text-only twin probe."""
    rdir = run.out / row
    t0 = time.perf_counter()
    summary, facts = _train_row(run, row)
    if not (rdir / "bundle" / "manifest.json").is_file():
        # fp32 only: the rows compare models, so every row is scored in the reference precision
        export_checkpoint(rdir / "ckpt", rdir / "bundle", cfg=ExportCfg(precisions=("fp32",)))
    metrics = _cached_json(rdir / "eval.json", lambda: evaluate(rdir / "bundle", run.test_dir, precision="fp32"))
    twins = _cached_json(rdir / "text_twins.json", lambda: bundle_text_twins(rdir / "bundle", run.test))
    # the first, uninterrupted pass's time is kept: a resumed run re-times only what it redid
    seconds = _cached_json(rdir / "seconds.json", lambda: round(time.perf_counter() - t0, 1))
    twin_t2i = (metrics.get("near_twin") or {}).get("long", {}).get("t2i")
    _say(f"{row}: t2i R@1 {metrics['t2i_r1']:.3f}, near-twin t2i {twin_t2i}")
    return {"eval": metrics, "seconds": seconds, "text_twins": twins, "fact_probe": facts,
            "final_loss": (summary["history"] or [{}])[-1].get("loss")}


def _stage1_summary(out: Path) -> dict[str, Any] | None:
    if not (out / "stage1" / "stage1.json").is_file():
        return None
    s1_summary = json.loads((out / "stage1" / "stage1.json").read_text())
    return {k: s1_summary.get(k) for k in ("seconds", "contrastive", "mntp", "val")}


def run_repro(out: str | Path, cfg: ReproCfg, rows: tuple[str, ...] = ROWS,
              command: str | None = None) -> dict[str, Any]:
    """Run (or continue) the rows in ``out`` and write the report; returns report.json's content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise LLM2CLIPError(f"unknown rows {sorted(unknown)}: choose among {', '.join(ROWS)}")
    t_start = time.perf_counter()
    paths = _data(out, cfg)
    train, val, test = (read_dataset(paths[s]) for s in ("train", "val", "test"))
    encoders = _text_encoders(out, cfg, rows, train, val)
    caption_acc, text_twins = _text_side(out, encoders, test)
    run = _Run(out, cfg, train, test, paths["test"], encoders, stage2_cfg(cfg, len(train)))
    results = {row: _run_row(run, row) for row in rows}
    throughput = None
    if "llm_nocc" in rows:
        throughput = _cached_json(out / "throughput.json", lambda: stage2_throughput(
            train, smollm2_dir(), out / "embeddings" / "llm_nocc", cfg))
    report = {"command": command, "config": asdict(cfg), "rows": results, "caption_retrieval": caption_acc,
              "text_twins": text_twins, "stage1": _stage1_summary(out),
              "stage2_throughput": throughput, "seconds": round(time.perf_counter() - t_start, 1)}
    return write_report(report, out)
