"""`llm2clip index build`: a dataset + a model bundle -> the index bundles the service loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm2clip.cliargs import add_command, positive_int
from llm2clip.encoders.base import DEFAULT_MAX_BATCH_TOKENS
from llm2clip.index import MODALITIES


def _captions(value: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    if not keys:
        raise argparse.ArgumentTypeError("name at least one caption: long, short, all or key,key")
    return keys


def add_parser(subparsers) -> None:
    index = subparsers.add_parser(
        "index", help="build FAISS index bundles of a corpus (images and captions)",
        description="Index bundles: a FAISS index over a corpus embedded with a model bundle, plus the "
                    "items its rows stand for. The service searches them.")
    sub = index.add_subparsers(dest="index_cmd", required=True, metavar="{build}")
    b = add_command(sub, "build", run)
    b.add_argument("--model", required=True, type=Path, help="model bundle folder (`llm2clip export`)")
    b.add_argument("--data", required=True, type=Path, help="dataset folder (items.jsonl + images)")
    b.add_argument("--out", required=True, type=Path,
                   help="output folder; each index bundle is replaced atomically, so a running service "
                        "never reads half an index")
    b.add_argument("--modality", choices=(*MODALITIES, "both"), default="both",
                   help="image, text, or both into OUT/image and OUT/text (default both)")
    b.add_argument("--captions", type=_captions, default=("long",), metavar="long|short|all",
                   help="captions of the text index: long, short, all (each caption its own row), or "
                        "comma-separated caption names (default long)")
    b.add_argument("--batch-size", type=positive_int, default=32, help="images per encoder call (default 32)")
    b.add_argument("--max-batch-tokens", type=positive_int, default=DEFAULT_MAX_BATCH_TOKENS,
                   help="token budget of one text encoder call: captions are grouped by length so that rows x "
                        f"the longest row stays under it (default {DEFAULT_MAX_BATCH_TOKENS})")
    b.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8", "fp16"],
                   help="the bundle's text encoder variant (default auto: the one the service would choose on "
                        "this machine, among those that passed their check at export)")
    b.add_argument("--workers", type=positive_int, default=2,
                   help="image decode threads, running ahead of the encoder (default 2)")
    b.add_argument("--threads", type=positive_int, default=None,
                   help="ONNX Runtime intra-op threads (default: every core)")
    b.add_argument("--factory", default=None,
                   help="FAISS index factory string (default: Flat up to 200k rows, HNSW32,Flat beyond)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_engine_options(b)


def _add_engine_options(b: argparse.ArgumentParser) -> None:
    g = b.add_argument_group(
        "distributed build (Ray Data)",
        "--engine ray decodes and encodes on a Ray cluster, in actors that each hold an ONNX encoder; this "
        "process collects the embeddings in corpus order and writes the same bundle a local build writes. "
        "Every node must read --model and --data at the same paths (a shared filesystem). Needs "
        "pip install 'llm2clip-retrieval[ray]'.")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: a Ray cluster")
    g.add_argument("--address", default=None,
                   help="Ray cluster: omit to start Ray on this machine, 'auto' to join the cluster this machine "
                        "is part of (`ray start`), or ray://HEAD:10001 (Ray Client)")
    g.add_argument("--actors", type=positive_int, default=None,
                   help="encoder actors (default: the cluster's CPUs / --actor-cpus)")
    g.add_argument("--actor-cpus", type=positive_int, default=1,
                   help="CPUs (and ONNX Runtime threads) per actor (default 1)")
    g.add_argument("--rows-per-task", type=positive_int, default=64,
                   help="images or captions one actor call encodes (default 64)")


def _summary(modality: str, out: Path, manifest: dict) -> str:
    build = manifest["build"]
    skipped = build["skipped"]
    reasons = ", ".join(f"{k} {v}" for k, v in skipped["reasons"].items())
    d = build["durations_s"]
    return (f"{modality} index: {manifest['count']} rows ({manifest['factory']}) -> {out}; "
            f"skipped {skipped['count']}{f' ({reasons})' if reasons else ''}; "
            f"read wait {d['read_wait']:.2f} s, encode {d['encode']:.2f} s, write {d['write']:.2f} s")


def run(args: argparse.Namespace) -> int:
    """embed a dataset's images and/or captions into index bundles

    Embed DATA with the model bundle's ONNX encoders and write index bundles: OUT/image (searched by text
    queries) and OUT/text (searched by image queries), or OUT itself with --modality image|text. Unreadable
    images are skipped and counted in the manifest.
    """
    from index_builder.ray_engine import RayCfg
    from index_builder.runner import BuildCfg, build_indexes
    from llm2clip.errors import LLM2CLIPError

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise LLM2CLIPError(f"--out {out} is a file: name a folder (it is created, or replaced if it is an index)")
    if args.engine != "ray" and (args.address or args.actors):
        raise LLM2CLIPError("--address and --actors apply to --engine ray only")
    ray = RayCfg(args.address, args.actors, args.actor_cpus, args.rows_per_task)
    cfg = BuildCfg(batch_size=args.batch_size, captions=args.captions, workers=args.workers, threads=args.threads,
                   progress=not args.no_progress, factory=args.factory, precision=args.precision,
                   max_batch_tokens=args.max_batch_tokens, engine=args.engine, ray=ray)
    for built in build_indexes(args.data, args.model, out, cfg, args.modality):
        print(_summary(built.modality, built.path, built.manifest))
    return 0
