"""Stage-1 step time of each speed setting against the original step, and their quality, in one run.

    .venv/bin/python bench/bench_stage1.py speed [--train DIR] [--val DIR] [--steps 3] [--variants current,fast]
    .venv/bin/python bench/bench_stage1.py quality --train DIR --val DIR [--steps 60] [--variants current,fast]

``speed``: the repro's stage 1 (SmolLM2-135M, 4 scenes + their 4 near twins x 2 views of the long caption and
its paraphrases, LoRA r 16, bf16 autocast, no activation checkpointing), one model per variant, the variants'
optimizer steps interleaved (step s of every variant, then step s + 1): each step sees the same micro-batch in
every variant, and the machine's drift (it is shared) falls on all of them alike. Step 0 of each warms up and
is not timed. Reports each variant's median step time and its speed-up over ``current`` (the median of the
per-step ratios), each step's loss, and with ``--val`` the validation scores below of what each variant trained.

``quality``: each variant trains ``--steps`` steps on the same data and seed (``train_text``), then the
validation split only: caption retrieval accuracy (``training.caption_retrieval``) and the paraphrase
near-twin probe on the validation scenes and their near twins (built here: ``near_twin_graph`` +
``paraphrase_long``, as stage 1's hard negatives are).

Without ``--train`` (speed), 200 train scenes are generated into a temporary folder. Absolute times vary
with the machine's load; the ratios of one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.stage1.config import Stage1Cfg  # noqa: E402

# the repro's stage 1 (research/repro.py ``_text_encoders``, ReproCfg's defaults) but for the step count
REPRO = {"batch_size": 8, "paraphrases": 2, "positives": "long", "hard_negatives": True, "seed": 0,
         "grad_checkpointing": False, "steps": 400, "warmup_steps": 40}
ORIGINAL = {"length_buckets": 2, "bf16_weights": False, "cast_once": False, "fused_adam": False, "attention": "sdpa"}
VARIANTS: dict[str, dict[str, Any]] = {
    "current": ORIGINAL,  # the step before the speed settings
    "bf16_weights": {**ORIGINAL, "bf16_weights": True},
    "buckets4": {**ORIGINAL, "length_buckets": 4},
    "cast_once": {**ORIGINAL, "bf16_weights": True, "cast_once": True},
    "fast_sdpa": {"attention": "sdpa"},  # every speed setting but the attention kernel
    "fast": {},  # Stage1Cfg's defaults: every speed setting that keeps the recipe
    "fast_top15": {"lora_layers": 15},  # + LoRA on the top 15 of 30 layers: another recipe
}


def variant_cfg(name: str, steps: int | None = None) -> Stage1Cfg:
    if name not in VARIANTS:
        raise SystemExit(f"bench_stage1: error: unknown variant {name!r}: choose among {', '.join(VARIANTS)}")
    cfg = Stage1Cfg(**{**REPRO, **VARIANTS[name]})
    return cfg if steps is None else replace(cfg, steps=steps, warmup_steps=max(1, steps // 10))


def _setup(name: str, cfg: Stage1Cfg, views: Any, tok: Any, base: Path) -> tuple[Any, Any, Any]:
    """(phase, optimizer, peft model) of one variant, as ``train_text`` builds them."""
    import torch

    from llm2clip.text import LLMEncoder
    from training.stage1.batches import ContrastiveLoss
    from training.stage1.loop import Phase, Run, _optimizer
    from training.stage1.lora import add_lora, load_encoder_base

    torch.manual_seed(cfg.seed)
    model = load_encoder_base(base, cfg.attention)
    enc = LLMEncoder(model)
    peft_model = add_lora(model, cfg)
    sampler = views.sampler(cfg.batch_size, cfg.seed, stream=0)
    phase = Phase("contrastive", cfg.steps, cfg.lr,
                  ContrastiveLoss(enc, tok, sampler, cfg.temperature, cfg.length_buckets))
    opt, _ = _optimizer(Run(cfg, Path(tempfile.gettempdir()), progress=False), phase, peft_model, None)
    return phase, opt, peft_model


def padding(views: Any, tok: Any, cfg: Stage1Cfg, steps: int) -> float:
    """Tokens the matmuls see over real tokens, over the first ``steps`` micro-batches."""
    from training.stage1.batches import _overhead, length_chunks

    sampler, real, padded = views.sampler(cfg.batch_size, cfg.seed, stream=0), 0, 0
    for m in range(steps):
        lengths = tok(sampler(m)[0])[1].sum(axis=1).tolist()
        for chunk in length_chunks(lengths, cfg.length_buckets, _overhead(cfg.length_buckets)):
            real += sum(lengths[i] for i in chunk)
            padded += len(chunk) * max(lengths[i] for i in chunk)
    return padded / real


def speed(train: Path, names: list[str], steps: int, val: Path | None = None) -> dict[str, Any]:
    """Interleaved optimizer steps of every variant; -> per variant: step times, median, speed-up, and with
    ``val`` the validation scores of the model each variant trained."""
    from llm2clip.data import read_dataset
    from llm2clip.defaults import smollm2_dir
    from llm2clip.text import Tokenizer
    from training.stage1.loop import _step
    from training.stage1.views import Views, caption_pools, twin_pools

    ds, base = read_dataset(train), smollm2_dir()
    t0 = time.perf_counter()
    views = Views(caption_pools(ds, REPRO["paraphrases"], 0, False, "long"), None)
    t1 = time.perf_counter()
    views.twins = twin_pools(ds, 0, False)
    pools_s = {"paraphrases_s_per_scene": (t1 - t0) / len(ds), "twins_s_per_scene": (time.perf_counter() - t1) / len(ds)}
    tok = Tokenizer(base, Stage1Cfg().max_tokens)
    cfgs = {n: variant_cfg(n) for n in names}
    built = {n: _setup(n, cfgs[n], views, tok, base) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, list[float]] = {n: [] for n in names}
    for s in range(steps + 1):
        for n in names:
            phase, opt, _ = built[n]
            t = time.perf_counter()
            entry = _step(cfgs[n], phase, opt, s)
            if s:
                times[n].append(time.perf_counter() - t)
            losses[n].append(entry["loss"])
            sys.stderr.write(f"[bench_stage1] step {s} {n}: {time.perf_counter() - t:.1f} s, loss {entry['loss']}\n")
    ref = np.asarray(times[names[0]])
    out = {"train": str(train), "steps": steps, "reference": names[0], **pools_s, "variants": {}}
    for n in names:
        out["variants"][n] = {
            "settings": {k: v for k, v in asdict(cfgs[n]).items() if k in ("length_buckets", "bf16_weights",
                                                                           "cast_once", "fused_adam", "lora_layers")},
            "step_s": [round(t, 2) for t in times[n]], "median_step_s": round(float(np.median(times[n])), 2),
            "speedup": round(float(np.median(ref / np.asarray(times[n]))), 3),
            "padding": round(padding(views, tok, cfgs[n], 20), 3), "losses": losses[n]}
    if val is not None:
        from training.stage1.checkpoint import write_model
        from training.stage1.lora import merge_lora

        twins = twin_corpus(val)
        for n in names:
            with tempfile.TemporaryDirectory() as folder:
                write_model(merge_lora(built[n][2]).eval(), base, Path(folder), n)
                out["variants"][n].update(score(Path(folder), val, twins))
    return out


def score(folder: Path, val: Path, twins: Any) -> dict[str, Any]:
    """Caption retrieval accuracy on ``val`` and the paraphrase near-twin probe on ``twins``."""
    from training.caption_retrieval import caption_retrieval, embed_texts, paraphrase_twin_accuracy

    probe = paraphrase_twin_accuracy(lambda t: embed_texts(folder, t, progress=False), twins)
    return {"val_caption_retrieval": round(caption_retrieval(folder, val, progress=False)["caption_retrieval"], 4),
            "val_twin_probe": round(probe["accuracy"], 4), "val_twin_pairs": probe["n_pairs"],
            "val_twin_by_attribute": probe["by_attribute"]}


def twin_corpus(val: Path, seed: int = 7) -> Any:
    """The validation scenes and a near twin of each (one attribute of one object changed, its long caption a
    generator paraphrase of the twin's graph), linked by ``twin_of``: what ``paraphrase_twin_accuracy`` reads.
    For a validation split that has no near twins of its own."""
    from llm2clip.data import Dataset, Item, near_twin_graph, paraphrase_long, read_dataset

    ds = read_dataset(val)
    items = []
    for i, item in enumerate(ds.items):
        state = np.random.SeedSequence([seed, i]).generate_state(2)
        twin = near_twin_graph(item.meta, int(state[0]))
        twin_id = f"{item.id}-twin"
        items.append(Item(item.id, item.image, dict(item.captions), {**item.meta, "twin_of": twin_id}))
        items.append(Item(twin_id, item.image, {"long": paraphrase_long(twin, int(state[1]))},
                          {**twin, "twin_of": item.id}))
    return Dataset(ds.root, items)


def quality(train: Path, val: Path, names: list[str], steps: int, out: Path) -> dict[str, Any]:
    """Each variant trained ``steps`` steps (same data, same seed), scored on the validation split only."""
    from training.stage1.train import train_text

    twins = twin_corpus(val)
    results = {}
    for n in names:
        t0 = time.perf_counter()
        summary = train_text(train, out / n, cfg=variant_cfg(n, steps), progress=False)
        results[n] = {"seconds": round(time.perf_counter() - t0, 1), "samples_s": summary["contrastive"]["samples_s"],
                      "first_loss": summary["contrastive"]["first_loss"],
                      "last_loss": summary["contrastive"]["last_loss"], **score(out / n, val, twins)}
        sys.stderr.write(f"[bench_stage1] {n}: {json.dumps(results[n])}\n")
    return {"train": str(train), "val": str(val), "steps": steps, "variants": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("speed", "quality"))
    ap.add_argument("--train", type=Path, default=None, help="training scenes (speed: 200 generated if absent)")
    ap.add_argument("--val", type=Path, default=None, help="validation scenes (never the test split): speed scores "
                                                          "each variant's model after its steps; quality needs it")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (speed, default 3) or "
                                                            "training steps (quality, default 60)")
    ap.add_argument("--variants", default="current,fast",
                    help=f"comma-separated, the first is the reference; among {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="quality: the runs' folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    names = [n for n in args.variants.split(",") if n]
    for n in names:
        variant_cfg(n)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.mode == "speed":
            train = args.train
            if train is None:
                from llm2clip.data import generate_scenes

                train = Path(tmp) / "train"
                generate_scenes(train, 200, "train", 0, progress=False)
            result = speed(train, names, args.steps or 3, args.val)
        else:
            if args.train is None or args.val is None:
                raise SystemExit("bench_stage1: error: quality needs --train and --val (a validation split)")
            result = quality(args.train, args.val, names, args.steps or 60, args.out or Path(tmp))
    result["command"] = " ".join(sys.argv)
    result["threads"] = torch.get_num_threads()
    text = json.dumps(result, indent=1)
    print(text)  # noqa: T201
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
