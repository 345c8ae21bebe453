"""`llm2clip train text|embed|clip` and `llm2clip export`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm2clip.cliargs import positive_int
from llm2clip.encoders.base import DEFAULT_MAX_BATCH_TOKENS
from training.variants import ALL_PRECISIONS, CHECK_SCENES, DEFAULT_PRECISIONS, INT8_METHOD, CheckThresholds


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train LLM2CLIP (stage 1: fine-tune the text encoder; stage 2: embed captions, train vision)",
        description="Stage 1 of LLM2CLIP: `text` fine-tunes the LLM text encoder on captions. Stage 2: `embed` "
                    "computes frozen LLM caption embeddings once; `clip` trains the vision tower and the adapter "
                    "against them with the CLIP loss.")
    sub = train.add_subparsers(dest="train_cmd", required=True, metavar="{text,embed,clip}")

    t = sub.add_parser(
        "text", help="stage 1: caption-contrastive LoRA fine-tuning of the LLM text encoder (resumable)",
        description="Stage 1 of LLM2CLIP: make a decoder LLM (Llama, Mistral, Qwen2, Gemma) bidirectional with "
                    "mean pooling, optionally adapt it with MNTP, then LoRA-train it with a contrastive loss where "
                    "two captions of a scene (long, short, generator paraphrases) are positives. OUT becomes a "
                    "Hugging Face model folder with the LoRA merged (for `train embed --text-encoder OUT`), "
                    "plus stage1.json; OUT/checkpoint/ lets a rerun resume or extend the run.")
    t.add_argument("--data", required=True, type=Path, help="training dataset folder (items.jsonl)")
    t.add_argument("--out", required=True, type=Path, help="output model folder (resumed when it holds a run)")
    t.add_argument("--base", type=Path, default=None,
                   help="Hugging Face folder of the base LLM (default: SmolLM2-135M-Instruct, offline)")
    t.add_argument("--val", type=Path, default=None,
                   help="held-out dataset: caption retrieval accuracy before and after, in stage1.json")
    t.add_argument("--steps", type=int, default=1000, help="contrastive optimizer steps (default 1000)")
    t.add_argument("--mntp-steps", type=int, default=0,
                   help="masked next-token prediction steps before the contrastive ones (default 0: none)")
    t.add_argument("--batch-size", type=int, default=16,
                   help="scenes per micro-batch, 2 views each: the contrastive problem's size (default 16)")
    t.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per optimizer step, each its own contrastive problem (default 1)")
    t.add_argument("--lr", type=float, default=2e-4, help="contrastive peak learning rate (default 2e-4)")
    t.add_argument("--mntp-lr", type=float, default=5e-5, help="MNTP peak learning rate (default 5e-5)")
    t.add_argument("--warmup-steps", type=int, default=50, help="linear warmup of each phase, then cosine")
    t.add_argument("--lora-r", type=int, default=16)
    t.add_argument("--lora-alpha", type=int, default=32)
    t.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (default 0; LLM2Vec: 0.05)")
    t.add_argument("--temperature", type=float, default=0.05, help="contrastive temperature (default 0.05)")
    t.add_argument("--max-tokens", type=int, default=512, help="captions are cut here (default 512)")
    t.add_argument("--paraphrases", type=int, default=2,
                   help="generator paraphrases of each scene's long caption, made once up front (default 2)")
    t.add_argument("--positives", choices=["all", "long"], default="all",
                   help="which of a scene's own captions are views: all (long with short, the paper's pairs; "
                        "default) or long (the long caption and its paraphrases only)")
    t.add_argument("--hard-negatives", action="store_true",
                   help="half of each micro-batch are generator near twins of the other half (one attribute of one "
                        "object changed), as negatives that differ in a single fact (scene corpora only)")
    t.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (default 50)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-bf16", action="store_true", help="train in fp32 (slower on CPUs with AMX)")
    t.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute activations in the backward pass: less memory, ~30%% more time (default on)")

    e = sub.add_parser("embed", help="embed a dataset's captions with a frozen LLM (sharded, resumable)",
                       description="Embed every caption of DATASET with the text encoder (bidirectional "
                                   "attention, mean pooling) and write shards to OUT. Re-running resumes.")
    e.add_argument("--data", required=True, type=Path, help="dataset folder (items.jsonl + images)")
    e.add_argument("--out", required=True, type=Path, help="output folder for the embedding shards")
    e.add_argument("--text-encoder", type=Path, default=None,
                   help="Hugging Face model folder of the text encoder (default: SmolLM2-135M-Instruct, offline)")
    e.add_argument("--max-batch-tokens", type=positive_int, default=DEFAULT_MAX_BATCH_TOKENS,
                   help="token budget of one encoder call: captions are grouped by length so that rows x the "
                        f"longest row stays under it (default {DEFAULT_MAX_BATCH_TOKENS})")
    e.add_argument("--max-tokens", type=positive_int, default=512, help="captions are cut here (default 512)")
    e.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="compute precision of the LLM's weights (default bf16: the CPU's bf16 units, GPUs)")
    e.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="storage dtype of the shards")
    e.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    e.add_argument("--captions", default="all", help="comma-separated caption keys to embed, or 'all'")

    c = sub.add_parser("clip", help="train the vision tower + adapter with the CLIP loss (resumable)",
                       description="Train a stage-2 checkpoint in OUT from DATASET images and the caption "
                                   "embeddings of `llm2clip train embed`. An existing checkpoint in OUT is resumed. "
                                   "Data-parallel: launch under torchrun (`torchrun --nproc_per_node N -m "
                                   "llm2clip_cli.main train clip ...`); --batch-size stays the global batch.")
    c.add_argument("--data", required=True, type=Path, help="training dataset folder")
    c.add_argument("--embeddings", required=True, type=Path, help="folder written by `llm2clip train embed`")
    c.add_argument("--out", required=True, type=Path, help="checkpoint folder (resumed when it exists)")
    c.add_argument("--epochs", type=int, default=8)
    c.add_argument("--batch-size", type=int, default=64, help="global batch over all processes (default 64)")
    c.add_argument("--lr", type=float, default=5e-4,
                   help="peak learning rate of the top: adapter, attention pool, temperature (default 5e-4)")
    c.add_argument("--layer-decay", type=float, default=0.85,
                   help="layer-wise lr decay over the backbone: layer l trains at lr * decay^(top - l), stem "
                        "lowest; 1 disables it (default 0.85)")
    c.add_argument("--backbone-lr", type=float, default=None,
                   help="lr of the backbone's top layer, lower layers decaying from it (default: lr * layer-decay)")
    c.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not on norms, biases)")
    c.add_argument("--warmup-steps", type=int, default=50)
    c.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the pretrained BatchNorm statistics (weights still train); needed for multi-process "
                        "runs to match one process (default on)")
    c.add_argument("--drop-path", type=float, default=0.2, help="stochastic depth rate of the backbone blocks")
    c.add_argument("--val", type=Path, default=None,
                   help="validation dataset: long-caption R@1/R@5 at the end of every epoch (needs --val-embeddings)")
    c.add_argument("--val-embeddings", type=Path, default=None,
                   help="caption embeddings of --val (`llm2clip train embed --data VAL`)")
    c.add_argument("--log-every", type=int, default=10, help="history entry every N steps (and at epoch ends)")
    c.add_argument("--image-size", type=int, default=224, help="input side of the vision tower")
    c.add_argument("--embed-dim", type=int, default=256, help="width of the joint embedding space")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--no-bf16", action="store_true", help="train in fp32 (slower on CPUs with AMX)")

    x = subparsers.add_parser("export", help="export a stage-2 checkpoint to a model bundle (ONNX encoders)",
                              description="Write a model bundle: image_encoder.onnx, text_encoder.onnx (LLM + "
                                          "pooling + adapter), tokenizer/ and manifest.json with sha256 of every file.")
    x.add_argument("--checkpoint", required=True, type=Path, help="folder written by `llm2clip train clip`")
    x.add_argument("--out", required=True, type=Path, help="bundle folder to write (replaced atomically)")
    x.add_argument("--text-encoder", type=Path, default=None,
                   help="text encoder folder (default: the one recorded in the checkpoint)")
    x.add_argument("--no-check", action="store_true", help="skip the ONNX-vs-PyTorch agreement check")
    x.add_argument("--precisions", type=_precisions, default=",".join(DEFAULT_PRECISIONS),
                   help="text encoder variants to write, comma-separated among fp32 (always), int8 (ONNX "
                        "Runtime, VNNI/AMX CPUs), bf16 (torch, bf16 CPUs and GPUs) and fp16 (ONNX Runtime CUDA, "
                        f"checked on a GPU only) (default {','.join(DEFAULT_PRECISIONS)})")
    x.add_argument("--check-data", type=Path, default=None,
                   help="held-out dataset each variant is checked on against fp32 (cosine, R@1); default: "
                        f"{CHECK_SCENES} generated scenes no split uses")
    x.add_argument("--int8-method", choices=["blockwise", "smoothquant"], default=INT8_METHOD,
                   help="int8 text encoder: blockwise (MatMulNBits, activations quantised per row and block of 32; "
                        "default) or smoothquant (SmoothQuant + per-call dynamic quantisation, one text per call: "
                        "~2x fp32 on VNNI CPUs, but it failed its check on the default model)")
    x.add_argument("--calibration-data", type=Path, default=None,
                   help="dataset whose captions calibrate --int8-method smoothquant (default: generated scenes)")
    x.add_argument("--max-r1-drop", type=float, default=CheckThresholds.max_r1_drop,
                   help="a variant whose t2i or i2t R@1 is more than this below fp32's fails its check and is "
                        f"never served (default {CheckThresholds.max_r1_drop})")
    train.set_defaults(func=run)
    x.set_defaults(func=run)


def _precisions(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(["fp32", *(v.strip() for v in value.split(",") if v.strip())]))
    unknown = [n for n in names if n not in ALL_PRECISIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown precision {unknown[0]!r}: choose among {', '.join(ALL_PRECISIONS)}")
    return names


def _keys(value: str) -> tuple[str, ...] | None:
    return None if value == "all" else tuple(k.strip() for k in value.split(",") if k.strip())


def run(args: argparse.Namespace) -> int:
    from llm2clip.data import read_dataset

    if args.command == "train" and args.train_cmd == "text":
        from training.stage1 import Stage1Cfg, train_text

        cfg = Stage1Cfg(steps=args.steps, mntp_steps=args.mntp_steps, batch_size=args.batch_size,
                        grad_accum=args.grad_accum, lr=args.lr, mntp_lr=args.mntp_lr, warmup_steps=args.warmup_steps,
                        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        temperature=args.temperature, max_tokens=args.max_tokens, paraphrases=args.paraphrases,
                        positives=args.positives, hard_negatives=args.hard_negatives, seed=args.seed,
                        bf16=not args.no_bf16, grad_checkpointing=args.grad_checkpointing, save_every=args.save_every)
        summary = train_text(args.data, args.out, args.base, cfg, val=args.val)
        cc = summary.get("contrastive") or {}
        print(f"text encoder {args.out}: {cc.get('steps', 0)} contrastive steps, loss {cc.get('first_loss')} -> "
              f"{cc.get('last_loss')}, {cc.get('samples_s')} samples/s")
        val = summary.get("val")
        if val:
            print(f"caption retrieval on {val['dataset']}: {val['before']['caption_retrieval']:.3f} -> "
                  f"{val['after']['caption_retrieval']:.3f}")
        return 0
    if args.command == "train" and args.train_cmd == "embed":
        from llm2clip.defaults import smollm2_dir
        from training.embed import embed_captions

        manifest = embed_captions(read_dataset(args.data), args.text_encoder or smollm2_dir(), args.out,
                                  max_tokens=args.max_tokens, dtype=args.dtype, captions=_keys(args.captions),
                                  precision=args.precision, max_batch_tokens=args.max_batch_tokens,
                                  device=args.device)
        print(f"{manifest['count']} caption embeddings ({manifest['dim']}-d, {manifest['dtype']}) in {args.out}"
              + (f", {manifest['tokens_per_s']:.0f} tok/s" if manifest.get("tokens_per_s") else ""))
        return 0
    if args.command == "train" and args.train_cmd == "clip":
        from training.clip import TrainCfg, train_clip

        cfg = TrainCfg(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, backbone_lr=args.backbone_lr,
                       layer_decay=args.layer_decay, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                       freeze_bn=args.freeze_bn, drop_path=args.drop_path, seed=args.seed, bf16=not args.no_bf16,
                       log_every=args.log_every)
        summary = train_clip(read_dataset(args.data), args.embeddings, args.out, cfg,
                             embed_dim=args.embed_dim, image_size=args.image_size,
                             val=read_dataset(args.val) if args.val else None, val_embeddings=args.val_embeddings)
        if summary["rank"] == 0:
            last = summary["history"][-1] if summary["history"] else {}
            print(f"checkpoint {args.out}: {summary['steps']} steps, last loss {last.get('loss')}")
        return 0
    if args.command == "export":
        from training.export import check_export, export_checkpoint

        bundle = export_checkpoint(args.checkpoint, args.out, args.text_encoder, precisions=args.precisions,
                                   check_data=args.check_data, int8_method=args.int8_method,
                                   calibration_data=args.calibration_data,
                                   thresholds=CheckThresholds(max_r1_drop=args.max_r1_drop))
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
    raise AssertionError(args)
