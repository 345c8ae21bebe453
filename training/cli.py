"""`llm2clip train embed|clip` and `llm2clip export`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train LLM2CLIP checkpoints (stage 2: embed captions, then train the vision side)",
        description="Stage 2 of LLM2CLIP: `embed` computes frozen LLM caption embeddings once; `clip` trains "
                    "the vision tower and the adapter against them with the CLIP loss.")
    sub = train.add_subparsers(dest="train_cmd", required=True, metavar="{embed,clip}")

    e = sub.add_parser("embed", help="embed a dataset's captions with a frozen LLM (sharded, resumable)",
                       description="Embed every caption of DATASET with the text encoder (bidirectional "
                                   "attention, mean pooling) and write shards to OUT. Re-running resumes.")
    e.add_argument("--data", required=True, type=Path, help="dataset folder (items.jsonl + images)")
    e.add_argument("--out", required=True, type=Path, help="output folder for the embedding shards")
    e.add_argument("--text-encoder", type=Path, default=None,
                   help="Hugging Face model folder of the text encoder (default: SmolLM2-135M-Instruct, offline)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--max-tokens", type=int, default=512, help="captions are cut here (default 512)")
    e.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="storage and compute dtype")
    e.add_argument("--captions", default="all", help="comma-separated caption keys to embed, or 'all'")

    c = sub.add_parser("clip", help="train the vision tower + adapter with the CLIP loss (resumable)",
                       description="Train a stage-2 checkpoint in OUT from DATASET images and the caption "
                                   "embeddings of `llm2clip train embed`. An existing checkpoint in OUT is resumed.")
    c.add_argument("--data", required=True, type=Path, help="training dataset folder")
    c.add_argument("--embeddings", required=True, type=Path, help="folder written by `llm2clip train embed`")
    c.add_argument("--out", required=True, type=Path, help="checkpoint folder (resumed when it exists)")
    c.add_argument("--epochs", type=int, default=8)
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--lr", type=float, default=5e-4, help="learning rate of the adapter and the pooling head")
    c.add_argument("--backbone-lr", type=float, default=2e-4, help="learning rate of the pretrained backbone")
    c.add_argument("--warmup-steps", type=int, default=50)
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


def _keys(value: str) -> tuple[str, ...] | None:
    return None if value == "all" else tuple(k.strip() for k in value.split(",") if k.strip())


def run(args: argparse.Namespace) -> int:
    from llm2clip.data import read_dataset

    if args.command == "train" and args.train_cmd == "embed":
        from llm2clip.defaults import smollm2_dir
        from training.embed import embed_captions

        manifest = embed_captions(read_dataset(args.data), args.text_encoder or smollm2_dir(), args.out,
                                  batch_size=args.batch_size, max_tokens=args.max_tokens, dtype=args.dtype,
                                  captions=_keys(args.captions))
        print(f"{manifest['count']} caption embeddings ({manifest['dim']}-d, {manifest['dtype']}) in {args.out}")
        return 0
    if args.command == "train" and args.train_cmd == "clip":
        from training.clip import TrainCfg, train_clip

        cfg = TrainCfg(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, backbone_lr=args.backbone_lr,
                       warmup_steps=args.warmup_steps, seed=args.seed, bf16=not args.no_bf16)
        summary = train_clip(read_dataset(args.data), args.embeddings, args.out, cfg,
                             embed_dim=args.embed_dim, image_size=args.image_size)
        last = summary["history"][-1] if summary["history"] else {}
        print(f"checkpoint {args.out}: {summary['steps']} steps, last loss {last.get('loss')}")
        return 0
    if args.command == "export":
        from training.export import check_export, export_checkpoint

        bundle = export_checkpoint(args.checkpoint, args.out, args.text_encoder)
        if not args.no_check:
            worst = check_export(args.checkpoint, bundle.path, args.text_encoder)
            print(f"ONNX Runtime vs PyTorch: min cosine {json.dumps(worst)}")
        print(f"model bundle {bundle.path} (fingerprint {bundle.fingerprint[:12]})")
        return 0
    raise AssertionError(args)
