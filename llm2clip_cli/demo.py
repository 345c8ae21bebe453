"""`llm2clip demo`: from nothing to a running long-caption search service on the offline defaults.

Every artifact stays in one work folder so that it can be reused and inspected:
  WORKDIR/data/{train,test}        scene corpora (items.jsonl + images)
  WORKDIR/embeddings/train         frozen caption embeddings (bf16 shards) of SmolLM2 with the shipped stage-1
                                   LoRA merged (llm2clip/adapters/, merged once per machine into the cache)
  WORKDIR/checkpoints/stage2       the stage-2 checkpoint (resumable) and its token cache of the frozen blocks
  WORKDIR/bundle                   the model bundle (ONNX encoders, tokenizer, manifest)
  WORKDIR/indexes/{image,text}     index bundles of the test corpus
  WORKDIR/eval.json                `llm2clip eval` of the bundle on the test corpus (with --eval)
A step whose outputs exist and whose parameters are unchanged is skipped, so a second run starts the
service in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm2clip.cliargs import add_command, add_dataclass_options, dataclass_values, opt, positive_int
from training.recipes import STAGE2_PRESETS, stage2_preset, stage2_shape

DEFAULT_WORKDIR = "llm2clip-work"
DEMO_PRECISIONS = ("fp32", "bf16")
TEXT_ENCODERS = ("cc", "base")
STAGE2_PRESET = "demo"  # training/recipes.py; its values are part of the train step's stamp


@dataclass(frozen=True)
class DemoCfg:
    """What the demo builds; a step reruns only when its part of this changed."""

    train_scenes: int = field(default=4000, metadata=opt("training scenes", positive_int))
    test_scenes: int = field(default=500, metadata=opt("scenes in the indexed test corpus", positive_int))
    epochs: int = field(default=STAGE2_PRESETS[STAGE2_PRESET].values["epochs"], metadata=opt("stage-2 epochs", positive_int))
    image_size: int = field(default=STAGE2_PRESETS[STAGE2_PRESET].shape["image_size"], metadata=opt(
        "input side of the vision tower (the demo's DINOv2 ViT-S/14: a multiple of 14)", positive_int))
    seed: int = field(default=0, metadata=opt("random seed"))
    text_encoder: str = field(default="cc", metadata=opt(
        "the frozen LLM: cc, SmolLM2 with the stage-1 (caption-contrastive) LoRA that ships with the package "
        "(llm2clip/adapters/, see its adapter.json); base, SmolLM2 as it comes", choices=TEXT_ENCODERS))
    eval: bool = field(default=False, metadata=opt("also run `llm2clip eval` on the test corpus"))


def add_parser(subparsers) -> None:
    d = add_command(subparsers, "demo", run)
    d.add_argument("--workdir", type=Path, default=Path(os.environ.get("LLM2CLIP_WORKDIR", DEFAULT_WORKDIR)),
                   help=f"folder of every artifact (default: ./{DEFAULT_WORKDIR}, or $LLM2CLIP_WORKDIR)")
    add_dataclass_options(d, DemoCfg)
    d.add_argument("--no-serve", action="store_true", help="build the artifacts, then exit")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8000)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Steps:
    """Runs a step unless its stamp says it already ran with the same parameters."""

    def __init__(self, workdir: Path) -> None:
        self.stamps = workdir / ".stamps"
        self.stamps.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, params: dict[str, Any], outputs: list[Path], fn: Callable[[], Any]) -> None:
        stamp = self.stamps / f"{name}.json"
        if stamp.is_file() and json.loads(stamp.read_text()) == params and all(p.exists() for p in outputs):
            _say(f"{name}: cached")
            return
        t0 = time.perf_counter()
        _say(f"{name} ...")
        fn()
        stamp.write_text(json.dumps(params, sort_keys=True))
        _say(f"{name}: done in {time.perf_counter() - t0:.0f} s")

    def changed(self, name: str, params: dict[str, Any]) -> bool:
        """The step ran before with other parameters."""
        stamp = self.stamps / f"{name}.json"
        return stamp.is_file() and json.loads(stamp.read_text()) != params


def artifact_paths(workdir: Path) -> dict[str, Path]:
    return {
        "train": workdir / "data" / "train", "test": workdir / "data" / "test",
        "embeddings": workdir / "embeddings" / "train", "checkpoint": workdir / "checkpoints" / "stage2",
        "bundle": workdir / "bundle", "image_index": workdir / "indexes" / "image",
        "text_index": workdir / "indexes" / "text", "eval": workdir / "eval.json",
    }


def build(workdir: Path, cfg: DemoCfg) -> dict[str, Path]:
    """Every artifact in ``workdir`` (see the module docstring), each step skipped when cached."""
    from llm2clip.data import generate_scenes

    paths = artifact_paths(workdir)
    steps = Steps(workdir)
    train_p = {"n": cfg.train_scenes, "seed": cfg.seed}
    test_p = {"n": cfg.test_scenes, "seed": cfg.seed + 1}
    steps.run("data-train", train_p, [paths["train"] / "items.jsonl"],
              lambda: generate_scenes(paths["train"], cfg.train_scenes, "train", cfg.seed))
    steps.run("data-test", test_p, [paths["test"] / "items.jsonl"],
              lambda: generate_scenes(paths["test"], cfg.test_scenes, "test", cfg.seed + 1))
    model_p = _build_model(steps, paths, cfg, train_p)
    _build_indexes(steps, paths, cfg, {**test_p, "model": model_p})
    return paths


def text_encoder(which: str) -> tuple[str, Callable[[], Path]]:
    """(name, folder getter) of the demo's frozen LLM: the name holds the shipped adapter's sha256, so a new
    adapter re-embeds; the getter merges it (once per machine) only when the embeddings are (re)computed."""
    from llm2clip.defaults import SMOLLM2_NAME, shipped_adapter, smollm2_dir

    if which == "base":
        return SMOLLM2_NAME, smollm2_dir
    from training.stage1.adapter import merged_text_encoder, read_card

    adapter = shipped_adapter()
    card = read_card(adapter)
    return f"{SMOLLM2_NAME}+{card['name']}-{card['sha256'][:16]}", lambda: merged_text_encoder(adapter)


def _build_model(steps: Steps, paths: dict[str, Path], cfg: DemoCfg, train_p: dict[str, Any]) -> str:
    """Caption embeddings, the stage-2 checkpoint and the bundle; returns the bundle's fingerprint."""
    from llm2clip.bundle import load_bundle
    from llm2clip.data import read_dataset
    from training.clip import Stage2Run, train_clip
    from training.config import EmbedCfg, ExportCfg
    from training.embed import embed_captions
    from training.export import export_checkpoint

    embed_cfg = EmbedCfg()
    llm_name, llm_dir = text_encoder(cfg.text_encoder)
    embed_p = {**train_p, "llm": llm_name, "max_tokens": embed_cfg.max_tokens, "precision": embed_cfg.precision}
    if steps.changed("embed", embed_p):
        # another text encoder: its embeddings, not a resume of the old ones
        import shutil

        shutil.rmtree(paths["embeddings"], ignore_errors=True)
    steps.run("embed", embed_p, [paths["embeddings"] / "manifest.json"],
              lambda: embed_captions(read_dataset(paths["train"]), llm_dir(), paths["embeddings"], embed_cfg))
    recipe = STAGE2_PRESETS[STAGE2_PRESET]
    shape = stage2_shape(STAGE2_PRESET, image_size=cfg.image_size)
    train_params = {**embed_p, "epochs": cfg.epochs, "preset": STAGE2_PRESET,
                    "recipe": {**recipe.values, "scaled_schedule": recipe.scaled_schedule},
                    "shape": dataclasses.asdict(shape)}
    if steps.changed("train", train_params):
        # other parameters: a fresh checkpoint, not a resume of the old one
        import shutil

        shutil.rmtree(paths["checkpoint"], ignore_errors=True)
    run = Stage2Run(read_dataset(paths["train"]), paths["embeddings"], paths["checkpoint"],
                    shape=shape)
    steps.run("train", train_params, [paths["checkpoint"] / "model.safetensors"],
              lambda: train_clip(run, stage2_preset(STAGE2_PRESET, train_items=len(run.dataset),
                                                    epochs=cfg.epochs, seed=cfg.seed)))
    # no int8 text encoder: on the default model it fails its check against fp32 (top-1 agreement 0.86 < 0.9,
    # measured), so writing and checking it would only cost the demo a minute
    export_p = {**train_params, "precisions": list(DEMO_PRECISIONS)}
    steps.run("export", export_p, [paths["bundle"] / "manifest.json"],
              lambda: export_checkpoint(paths["checkpoint"], paths["bundle"],
                                        cfg=ExportCfg(precisions=DEMO_PRECISIONS)))
    return load_bundle(paths["bundle"], verify=False).fingerprint


def _build_indexes(steps: Steps, paths: dict[str, Path], cfg: DemoCfg, index_p: dict[str, Any]) -> None:
    """The test corpus's image and caption indexes, and its eval when asked."""
    from index_builder.runner import build_index
    from llm2clip.data import read_dataset
    from llm2clip.index import MODALITIES

    for modality in MODALITIES:
        steps.run(f"index-{modality}", index_p, [paths[f"{modality}_index"] / "manifest.json"],
                  lambda m=modality: build_index(read_dataset(paths["test"]), paths["bundle"],
                                                 paths[f"{m}_index"], modality=m))
    if cfg.eval:
        def _eval() -> None:
            from training.eval import evaluate

            result = evaluate(paths["bundle"], paths["test"])
            paths["eval"].write_text(json.dumps(result, indent=2))
            _say("eval: " + json.dumps({k: result[k] for k in ("t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5", "n")}))

        steps.run("eval", index_p, [paths["eval"]], _eval)


def run(args: argparse.Namespace) -> int:
    """build everything on the offline defaults and serve it on 127.0.0.1:8000

    Generate the scene corpus, embed captions with SmolLM2-135M and the stage-1 LoRA that ships with the package
    (--text-encoder base: without it), train the vision side (EfficientNet-Lite0 +
    adapter), export ONNX encoders, index the test corpus and serve it. Artifacts are cached in --workdir; a
    second run only starts the service.
    """
    from llm2clip.errors import LLM2CLIPError

    if not args.no_serve and not port_free(args.host, args.port):
        raise LLM2CLIPError(f"port {args.port} on {args.host} is in use: stop the other server or pass --port")
    t0 = time.perf_counter()
    paths = build(args.workdir, DemoCfg(**dataclass_values(args, DemoCfg)))
    _say(f"artifacts ready in {args.workdir} ({time.perf_counter() - t0:.0f} s)")
    if args.no_serve:
        return 0
    from service.cli import serve

    _say(f"serving on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    return serve({"model": paths["bundle"], "image_index": paths["image_index"], "text_index": paths["text_index"],
                  "corpus_root": paths["test"], "host": args.host, "port": args.port})
