"""`llm2clip index build`: a dataset + a model bundle -> the index bundles the service loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from index_builder.runner import DEFAULT_SHARD_SIZE
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
        "index", help="build FAISS index bundles of a corpus (images and captions), or add items to them",
        description="Index bundles: a FAISS index over a corpus embedded with a model bundle, plus the "
                    "items its rows stand for. The service searches them.")
    sub = index.add_subparsers(dest="index_cmd", required=True, metavar="{build,add}")
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
                   help="FAISS index factory string (default: chosen by corpus size and --memory-budget: Flat, "
                        "HNSW, IVF or OPQ+IVF-PQ); its search parameter is tuned either way")
    b.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE,
                   help="items embedded and saved at a time in OUT.partial/ (OUT/image.partial, OUT/text.partial "
                        "with both): a build killed at any point resumes from its last saved shard when run again "
                        f"with the same arguments (default {DEFAULT_SHARD_SIZE})")
    b.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_index_options(b)
    _add_engine_options(b)
    _add_add(sub)


def _size(value: str) -> int:
    """Bytes from 8G, 512M, 1.5T or a plain number."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    v = value.strip().lower().removesuffix("b").removesuffix("i")
    try:
        n = float(v[:-1]) * units[v[-1]] if v and v[-1] in units else float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a size: write e.g. 8G, 512M or a number of bytes") from None
    if n <= 0:
        raise argparse.ArgumentTypeError("a memory budget must be positive")
    return int(n)


def _recall(value: str) -> float:
    try:
        r = float(value)
    except ValueError:
        r = -1.0
    if not 0 < r <= 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a recall is a number in (0, 1], e.g. 0.95")
    return r


def _add_index_options(b: argparse.ArgumentParser) -> None:
    g = b.add_argument_group(
        "FAISS index", "The index type follows autofaiss' rules (Flat while exact search is cheap, HNSW or IVF "
        "while the vectors fit the budget, OPQ+IVF-PQ when they do not); its nprobe / efSearch is tuned on corpus "
        "vectors held out of the index to the smallest value reaching --target-recall, recorded in the manifest "
        "and used by the service.")
    g.add_argument("--memory-budget", type=_size, default=None,
                   help="memory the index may take when served, e.g. 8G (default: a quarter of this machine's "
                        "memory, or of its container's limit)")
    g.add_argument("--target-recall", type=_recall, default=0.95,
                   help="recall@10 against exact search the tuned search parameter must reach (default 0.95)")
    g.add_argument("--latency-budget-ms", type=float, default=None,
                   help="most ms a single query may take; wins over --target-recall (default: none)")
    g.add_argument("--memory-mappable", action="store_true",
                   help="choose an IVF index, which the service can memory-map (LLM2CLIP_INDEX_MMAP): an index "
                        "larger than RAM")


def _add_engine_options(b: argparse.ArgumentParser) -> None:
    g = b.add_argument_group(
        "distributed build (Ray Data)",
        "--engine ray decodes and encodes on a Ray cluster, in actors that each hold an ONNX encoder; this "
        "process collects the embeddings in corpus order, a shard at a time (resumable as a local build), and "
        "writes the same bundle a local build writes. Every node must read --model and --data at the same "
        "paths (a shared filesystem). Needs pip install 'llm2clip-retrieval[ray]'.")
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


def _add_add(sub) -> None:
    a = add_command(sub, "add", run_add)
    a.add_argument("--index", required=True, type=Path,
                   help="index bundle to add to, or a folder holding image/ and text/ bundles (both get the items)")
    a.add_argument("--data", required=True, type=Path,
                   help="dataset folder (items.jsonl + images), under the index's corpus root: its items whose id "
                        "the index lacks are added")
    a.add_argument("--model", type=Path, default=None,
                   help="model bundle the index was built with (refused if its fingerprint differs: vectors of two "
                        "models are not comparable). Default: the bundle the build recorded, if it is still there "
                        "with the same fingerprint")
    a.add_argument("--modality", choices=MODALITIES, default=None,
                   help="refuse unless the index is of this modality (default: the index's)")
    a.add_argument("--captions", type=_captions, default=None, metavar="long|short|all",
                   help="refuse unless the index embeds these captions (default: the index's)")
    a.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "int8", "fp16"],
                   help="text encoder variant (default: the one the index was built with)")
    a.add_argument("--batch-size", type=positive_int, default=32, help="images per encoder call (default 32)")
    a.add_argument("--workers", type=positive_int, default=2, help="image decode threads (default 2)")
    a.add_argument("--threads", type=positive_int, default=None,
                   help="ONNX Runtime intra-op threads (default: every core)")
    a.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


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
    images are skipped and counted in the manifest. Resumable: the embeddings are saved a shard at a time beside
    each index (OUT.partial/) until it is written, so a build killed at any point, run again with the same
    arguments, embeds only what it had not saved and writes the index a clean build writes.
    """
    from index_builder.ray_engine import RayCfg
    from index_builder.runner import BuildCfg, build_indexes
    from llm2clip.errors import LLM2CLIPError
    from llm2clip.index import IndexBuildCfg

    out: Path = args.out
    if args.engine != "ray" and (args.address or args.actors):
        raise LLM2CLIPError("--address and --actors apply to --engine ray only")
    if out.exists() and not out.is_dir():
        raise LLM2CLIPError(f"--out {out} is a file: name a folder (it is created, or replaced if it is an index)")
    cfg = BuildCfg(batch_size=args.batch_size, captions=args.captions, workers=args.workers, threads=args.threads,
                   progress=not args.no_progress, factory=args.factory, precision=args.precision,
                   max_batch_tokens=args.max_batch_tokens, shard_size=args.shard_size, engine=args.engine,
                   ray=RayCfg(args.address, args.actors, args.actor_cpus, args.rows_per_task),
                   index=IndexBuildCfg(memory_budget_bytes=args.memory_budget, memory_mappable=args.memory_mappable,
                                       target_recall=args.target_recall, latency_budget_ms=args.latency_budget_ms))
    for built in build_indexes(args.data, args.model, out, cfg, args.modality):
        print(_summary(built.modality, built.path, built.manifest))
    return 0


def _add_targets(folder: Path) -> list[Path]:
    from llm2clip.bundle import MANIFEST
    from llm2clip.errors import BundleError

    if (folder / MANIFEST).is_file() or not folder.is_dir():
        return [folder]  # an index bundle, or a path load errors explain
    found = [folder / m for m in MODALITIES if (folder / m / MANIFEST).is_file()]
    if not found:
        raise BundleError(f"{folder} is no index bundle and holds none (image/, text/): name an index bundle, or "
                          "build one with `llm2clip index build`")
    return found


def run_add(args: argparse.Namespace) -> int:
    """add a dataset's new items to index bundles, without rebuilding them

    Embed the items of DATA whose id the index lacks and append them: existing rows keep their row numbers, new
    rows follow, and a second add of the same data adds nothing. Each index is published as a new version in one
    rename (a running service never reads half of it; the old version stays whole if the add fails). Refuses an
    index built with another model, modality or captions. An IVF index warns when the added items have drifted
    from what it was trained on, or it has grown past twice that: rebuild it then (`llm2clip index build`).
    """
    import sys

    from index_builder.append import AddCfg, add_dataset

    cfg = AddCfg(modality=args.modality, captions=args.captions, precision=args.precision,
                 batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                 progress=not args.no_progress)
    for target in _add_targets(args.index):
        res = add_dataset(target, args.data, args.model, cfg)
        skipped = f"; skipped {res.skipped['count']}" if res.skipped.get("count") else ""
        print(f"{res.modality} index: added {res.items_added} items ({res.rows_added} rows) -> {res.path}: "
              f"{res.manifest['count']} rows; {res.already} already there{skipped}")
        drift = res.drift or {}
        if drift.get("needs_retrain"):
            print(f"llm2clip: warning: {res.path} needs retraining: {drift['reason']}; rebuild it with "
                  "`llm2clip index build`", file=sys.stderr)
    return 0
