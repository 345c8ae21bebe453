"""`llm2clip train text|embed|clip` and `llm2clip export`.

The options of a config come from its dataclass (``llm2clip.cliargs.add_dataclass_options``), so a default is
written once, in the dataclass. Errors that a flag can fix name the flag here, not in the library.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm2clip.cliargs import (
    Opt,
    add_command,
    add_dataclass_options,
    dataclass_values,
    non_negative_int,
    positive_int,
)
from llm2clip.errors import LLM2CLIPError
from training.config import EmbedCfg, ExportCfg, ModelShape, TrainCfg
from training.recipes import STAGE2_PRESETS
from training.stage1.config import ATTENTIONS, POSITIVES, Stage1Cfg
from training.variants import CheckThresholds

# `train text`'s options: the fields of Stage1Cfg (where their defaults are), in this order
STAGE1_OPTIONS = {
    "steps": Opt("contrastive optimizer steps", positive_int),
    "mntp_steps": Opt("masked next-token prediction steps before the contrastive ones (0: none)",
                      non_negative_int),
    "batch_size": Opt("scenes per micro-batch, 2 views each: the contrastive problem's size", positive_int),
    "grad_accum": Opt("micro-batches per optimizer step, each its own contrastive problem", positive_int),
    "lr": Opt("contrastive peak learning rate"),
    "mntp_lr": Opt("MNTP peak learning rate"),
    "warmup_steps": Opt("linear warmup of each phase, then cosine", non_negative_int),
    "lora_r": Opt("LoRA rank", positive_int),
    "lora_alpha": Opt("LoRA scaling numerator", positive_int),
    "lora_dropout": Opt("LoRA dropout (LLM2Vec: 0.05)"),
    "temperature": Opt("contrastive temperature"),
    "max_tokens": Opt("captions are cut here", positive_int),
    "paraphrases": Opt("generator paraphrases of each scene's long caption, made once up front",
                       non_negative_int),
    "positives": Opt("which of a scene's own captions are views: all (long with short, the paper's pairs) or "
                     "long (the long caption and its paraphrases only)", choices=POSITIVES),
    "hard_negatives": Opt("half of each micro-batch are generator near twins of the other half (one attribute "
                          "of one object changed), as negatives that differ in a single fact (scene corpora only)"),
    "other_words": Opt("N more views of each scene (and of its twin): a long-style view with its class, size, "
                       "orientation and texture words swapped for WordNet synonyms (half of them)", non_negative_int),
    "alt_views": Opt("N more views of each scene (and of its twin): its long caption in the alt grammar (other "
                     "sentence orders, constructions and synonyms)", non_negative_int),
    "save_every": Opt("checkpoint every N steps", positive_int),
    "seed": Opt("random seed"),
    "bf16": Opt("bf16 autocast on CPU (AMX) and GPU; off: fp32"),
    "grad_checkpointing": Opt("recompute activations in the backward pass: less memory, ~30%% more time"),
    "lora_layers": Opt("LoRA on the top N transformer layers only, the backward pass stops below them "
                       "(0: every layer)", non_negative_int),
    "bf16_weights": Opt("hold the frozen projections in bf16 while training (with --bf16: the same products, "
                        "no per-call weight rounding); the float32 weights are merged"),
    "length_buckets": Opt("a micro-batch's texts run in up to N calls of similar length, for less padding "
                          "(2: the original long/short cut)", positive_int),
    "cast_once": Opt("with --bf16: round each layer norm's output to bf16 once for the projections that read it, "
                     "not once per projection"),
    "fused_adam": Opt("AdamW as one fused kernel over the LoRA tensors"),
    "attention": Opt("attention kernel while training: sdpa (torch's fused kernel) or eager (matmuls + softmax)",
                     choices=ATTENTIONS),
    "device": Opt("torch device to train and validate on: cpu, cuda or cuda:N (default: cuda when present, else "
                  "cpu); a run resumes on another device"),
}


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train LLM2CLIP (stage 1: fine-tune the text encoder; stage 2: embed captions, train vision)",
        description="Stage 1 of LLM2CLIP: `text` fine-tunes the LLM text encoder on captions. Stage 2: `embed` "
                    "computes frozen LLM caption embeddings once; `clip` trains the vision tower and the adapter "
                    "against them with the CLIP loss.")
    sub = train.add_subparsers(dest="train_cmd", required=True, metavar="{text,embed,clip,adapter}")
    _add_text(sub)
    _add_embed(sub)
    _add_clip(sub)
    _add_adapter(sub)
    _add_export(subparsers)


def _data_and_out(parser: argparse.ArgumentParser, data: str, out: str) -> None:
    """The two folders every training command takes: the dataset it reads and where it writes (and resumes)."""
    parser.add_argument("--data", required=True, type=Path, help=data)
    parser.add_argument("--out", required=True, type=Path, help=out)


def _add_text(sub) -> None:
    t = add_command(sub, "text", _run_text)
    _data_and_out(t, "training dataset folder (items.jsonl)", "output model folder (resumed when it holds a run)")
    t.add_argument("--base", type=Path, default=None,
                   help="Hugging Face folder of the base LLM (default: SmolLM2-135M-Instruct, offline)")
    t.add_argument("--val", type=Path, default=None,
                   help="held-out dataset: caption retrieval accuracy before and after, in stage1.json")
    add_dataclass_options(t, Stage1Cfg, STAGE1_OPTIONS)


def _add_embed(sub) -> None:
    e = add_command(sub, "embed", _run_embed)
    _data_and_out(e, "dataset folder (items.jsonl + images)", "output folder for the embedding shards")
    e.add_argument("--text-encoder", type=Path, default=None,
                   help="Hugging Face model folder of the text encoder (default: SmolLM2-135M-Instruct, offline)")
    add_dataclass_options(e, EmbedCfg)


def _add_clip(sub) -> None:
    c = add_command(sub, "clip", _run_clip)
    _data_and_out(c, "training dataset folder", "checkpoint folder (resumed when it exists)")
    c.add_argument("--embeddings", required=True, type=Path, help="folder written by `llm2clip train embed`")
    c.add_argument("--preset", choices=list(STAGE2_PRESETS), default="default",
                   help="the recipe the options below change: " + "; ".join(
                       f"{name}: {p.about}" for name, p in STAGE2_PRESETS.items()) + " (default default)")
    c.add_argument("--val", type=Path, default=None,
                   help="validation dataset: long-caption R@1/R@5 at the end of every epoch (needs --val-embeddings)")
    c.add_argument("--val-embeddings", type=Path, default=None,
                   help="caption embeddings of --val (`llm2clip train embed --data VAL`)")
    c.add_argument("--token-cache", type=Path, default=None,
                   help="folder of the frozen blocks' token caches (default OUT/token_cache); caches are named "
                        "by what they depend on, so runs on the same images and vision side (seeds, text "
                        "encoders) can share one")
    # the preset fills in what is not given (its recipe and the vision tower it was chosen for); the defaults
    # shown are the default preset's
    add_dataclass_options(c, ModelShape, suppress=True)
    add_dataclass_options(c, TrainCfg, suppress=True)


def _add_adapter(sub) -> None:
    a = add_command(sub, "adapter", _run_adapter)
    a.add_argument("--run", required=True, type=Path, help="a finished stage-1 run (`llm2clip train text --out`)")
    a.add_argument("--out", required=True, type=Path, help="the adapter folder to write (replaced if it exists)")
    a.add_argument("--name", required=True, help="the adapter's name (its cache folder and model name)")
    a.add_argument("--check", type=Path, default=None,
                   help="a dataset: compare the long-caption embeddings of the exported adapter with the run's "
                        "own model on it, and record the cosines in the card")


def _add_export(subparsers) -> None:
    x = add_command(subparsers, "export", _run_export)
    x.add_argument("--checkpoint", required=True, type=Path, help="folder written by `llm2clip train clip`")
    x.add_argument("--out", required=True, type=Path, help="bundle folder to write (replaced atomically)")
    x.add_argument("--text-encoder", type=Path, default=None,
                   help="text encoder folder (default: the one recorded in the checkpoint)")
    x.add_argument("--no-check", action="store_true", help="skip the ONNX-vs-PyTorch agreement check")
    add_dataclass_options(x, ExportCfg)
    add_dataclass_options(x, CheckThresholds)


def _run_text(args: argparse.Namespace) -> int:
    """stage 1: caption-contrastive LoRA fine-tuning of the LLM text encoder (resumable)

    Stage 1 of LLM2CLIP: make a decoder LLM (Llama, Mistral, Qwen2, Gemma) bidirectional with mean pooling,
    optionally adapt it with MNTP, then LoRA-train it with a contrastive loss where two captions of a scene
    (long, short, generator paraphrases) are positives. OUT becomes a Hugging Face model folder with the LoRA
    merged (for `train embed --text-encoder OUT`), plus stage1.json; OUT/checkpoint/ lets a rerun resume or
    extend the run.
    """
    from training.stage1.train import train_text

    summary = train_text(args.data, args.out, args.base, Stage1Cfg(**dataclass_values(args, Stage1Cfg)),
                         val=args.val)
    cc = summary.get("contrastive") or {}
    print(f"text encoder {args.out}: {cc.get('steps', 0)} contrastive steps, loss {cc.get('first_loss')} -> "
          f"{cc.get('last_loss')}, {cc.get('samples_s')} samples/s")
    val = summary.get("val")
    if val:
        print(f"caption retrieval on {val['dataset']}: {val['before']['caption_retrieval']:.3f} -> "
              f"{val['after']['caption_retrieval']:.3f}")
    return 0


def _run_adapter(args: argparse.Namespace) -> int:
    """export a stage-1 run's LoRA as a small bf16 adapter with its card

    A stage-1 output folder is a full copy of the LLM; the adapter is its contrastive LoRA alone (~10 MB for
    SmolLM2-135M at rank 16) with a card that records the base, the recipe, the validation and a sha256.
    `llm2clip demo` ships one; training.stage1.adapter.merged_text_encoder merges it into the base once per
    machine.
    """
    from llm2clip.data import read_dataset
    from training.stage1.adapter import check_adapter, export_adapter

    card = export_adapter(args.run, args.out, args.name)
    size = (args.out / "adapter_model.safetensors").stat().st_size
    print(f"adapter {args.name}: {card['params']:,} parameters, {size / 2**20:.1f} MiB in {args.out}")
    if args.check is not None:
        texts = [item.captions["long"] for item in read_dataset(args.check) if "long" in item.captions]
        check = check_adapter(args.out, args.run, texts)
        print(f"against the run's own model on {check['texts']} captions: cosine min {check['min_cosine']:.6f}, "
              f"mean {check['mean_cosine']:.6f}")
    return 0


def _run_embed(args: argparse.Namespace) -> int:
    """embed a dataset's captions with a frozen LLM (sharded, resumable)

    Embed every caption of DATASET with the text encoder (bidirectional attention, mean pooling) and write
    shards to OUT. Re-running resumes.
    """
    from llm2clip.data import read_dataset
    from llm2clip.defaults import smollm2_dir
    from training.embed import embed_captions

    if args.text_encoder is not None and not (args.text_encoder / "config.json").is_file():
        raise LLM2CLIPError(f"--text-encoder {args.text_encoder} is not a Hugging Face model folder (no "
                            "config.json): pass one, or omit --text-encoder to use the default SmolLM2-135M")
    manifest = embed_captions(read_dataset(args.data), args.text_encoder or smollm2_dir(), args.out,
                              EmbedCfg(**dataclass_values(args, EmbedCfg)))
    print(f"{manifest['count']} caption embeddings ({manifest['dim']}-d, {manifest['dtype']}) in {args.out}"
          + (f", {manifest['tokens_per_s']:.0f} tok/s" if manifest.get("tokens_per_s") else ""))
    return 0


def _run_clip(args: argparse.Namespace) -> int:
    """train the vision tower + adapter with the CLIP loss (resumable)

    Train a stage-2 checkpoint in OUT from DATASET images and the caption embeddings of `llm2clip train embed`.
    An existing checkpoint in OUT is resumed. Data-parallel: launch under torchrun (`torchrun --nproc_per_node N
    -m llm2clip_cli.main train clip ...`); --batch-size stays the global batch.
    """
    from llm2clip.data import read_dataset
    from training.clip import Stage2Run, train_clip
    from training.recipes import stage2_preset, stage2_shape

    if (args.val is None) != (args.val_embeddings is None):
        raise LLM2CLIPError("--val and --val-embeddings go together: give both for per-epoch validation")
    dataset = read_dataset(args.data)
    cfg = stage2_preset(args.preset, train_items=len(dataset), **dataclass_values(args, TrainCfg))
    run = Stage2Run(dataset, args.embeddings, args.out,
                    shape=stage2_shape(args.preset, **dataclass_values(args, ModelShape)),
                    val=read_dataset(args.val) if args.val else None, val_embeddings=args.val_embeddings,
                    token_cache=args.token_cache)
    summary = train_clip(run, cfg)
    if summary["rank"] == 0:
        last = summary["history"][-1] if summary["history"] else {}
        print(f"checkpoint {args.out}: {summary['steps']} steps, last loss {last.get('loss')}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    """export a stage-2 checkpoint to a model bundle (ONNX encoders)

    Write a model bundle: image_encoder.onnx, text_encoder.onnx (LLM + pooling + adapter), tokenizer/ and
    manifest.json with sha256 of every file.
    """
    from training.export import check_export, export_checkpoint

    cfg = ExportCfg(**dataclass_values(args, ExportCfg),
                    thresholds=CheckThresholds(**dataclass_values(args, CheckThresholds)))
    bundle = export_checkpoint(args.checkpoint, args.out, args.text_encoder, cfg)
    if not args.no_check:
        worst = check_export(args.checkpoint, bundle.path, args.text_encoder)
        print(f"ONNX Runtime vs PyTorch: min cosine {json.dumps(worst)}")
    for name, variant in bundle.text_variants.items():
        check = variant.get("check")
        if check:
            verdict = "passed" if check.get("passed") else "FAILED"
            print(f"text {name}: {verdict}: {check.get('reason')} (cosine mean {check.get('cosine_mean')}, "
                  f"R@1 {check.get('r1')} vs fp32 {check.get('r1_fp32')})")
    print(f"model bundle {bundle.path} (fingerprint {bundle.fingerprint[:12]})")
    return 0
