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
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

from training.repro_cli import ROWS  # noqa: E402

REPORT_KEYS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")


@dataclass
class ReproCfg:
    train_scenes: int = 4000
    val_scenes: int = 300  # stage-1 held-out set
    test_scenes: int = 500
    image_size: int = 160
    embed_dim: int = 256
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    # ~6 s per step of 8 scenes (+ their twins) x 2 views on 2 cores: stage 1 takes ~46 min, once
    stage1_steps: int = 400
    stage1_mntp_steps: int = 0
    stage1_batch: int = 8
    stage1_paraphrases: int = 2
    # the corpus's short captions name only count, classes and background: as positives of the long caption
    # ("all", the paper's pairs) they pull its embedding toward those facts and llm_cc loses to llm_nocc;
    # "long" pairs a long caption with its paraphrases only (docs/results/repro/FINDINGS.md)
    stage1_positives: str = "long"
    # half of each stage-1 micro-batch: near twins of the other half; what teaches the text side which
    # object carries a size or an orientation (FINDINGS.md)
    stage1_hard_negatives: bool = True
    clip77_width: int = 256
    clip77_layers: int = 4
    throughput_steps: int = 5
    seed: int = 0


QUICK = ReproCfg(train_scenes=24, val_scenes=8, test_scenes=12, image_size=64, embed_dim=64, epochs=1,
                 batch_size=8, stage1_steps=2, stage1_mntp_steps=1, stage1_batch=4, stage1_paraphrases=1,
                 clip77_width=64, clip77_layers=2, throughput_steps=1)


def _say(msg: str) -> None:
    import sys

    print(f"[repro] {msg}", file=sys.stderr, flush=True)


def _cached_json(path: Path, fn) -> Any:
    if path.is_file():
        return json.loads(path.read_text())
    value = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True))
    return value


def _data(out: Path, cfg: ReproCfg) -> dict[str, Path]:
    from llm2clip.data import generate_scenes

    paths = {s: out / "data" / s for s in ("train", "val", "test")}
    sizes = {"train": cfg.train_scenes, "val": cfg.val_scenes, "test": cfg.test_scenes}
    for split, path in paths.items():
        if not (path / "items.jsonl").is_file():
            _say(f"scenes: {split} ({sizes[split]})")
            generate_scenes(path, sizes[split], split, cfg.seed + {"train": 0, "val": 1, "test": 2}[split])
    return paths


def stage2_throughput(dataset, llm_dir: Path, emb_dir: Path, cfg: ReproCfg) -> dict[str, float]:
    """Samples/s of a stage-2 step with precomputed embeddings vs with the frozen LLM run in the step."""
    from llm2clip.encoders.torch_backend import TorchTextEncoder
    from training.clip import clip_loss, default_model_cfg, load_images, normalize
    from training.embed import CaptionEmbeddings

    caps = CaptionEmbeddings(emb_dir)
    model_cfg = default_model_cfg(cfg.embed_dim, caps.dim, cfg.image_size, "llm", 512)
    from llm2clip.model import LLM2CLIP

    torch.manual_seed(cfg.seed)
    model = LLM2CLIP(model_cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    n = min(cfg.batch_size, len(dataset))
    items = dataset.items[:n]
    images = torch.from_numpy(load_images(dataset, model_cfg.preprocess, progress=False)[:n])
    llm = TorchTextEncoder.from_folder(llm_dir, 512, precision="bf16", normalize=False)
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


def bundle_text_twins(bundle: Path, test) -> dict[str, Any] | None:
    """The paraphrase near-twin probe through a row's exported text encoder (LLM or text tower + adapter)."""
    from llm2clip.bundle import load_bundle
    from llm2clip.encoders.onnx import load_onnx_encoders
    from training.caption_retrieval import paraphrase_twin_accuracy

    _, txt = load_onnx_encoders(load_bundle(bundle))
    return paraphrase_twin_accuracy(txt.encode, test)


def stage2_cfg(cfg: ReproCfg, train_items: int, epochs: int | None = None):
    """The stage-2 ``TrainCfg`` every row trains with: warmup over 1/20 of the steps, 100 history points."""
    from training.clip import TrainCfg

    epochs = epochs or cfg.epochs
    total_steps = max(1, train_items // cfg.batch_size) * epochs
    return TrainCfg(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                    warmup_steps=max(1, total_steps // 20), log_every=max(1, total_steps // 100))


def run_repro(out: str | Path, cfg: ReproCfg, rows: tuple[str, ...] = ROWS,
              command: str | None = None) -> dict[str, Any]:
    from llm2clip.config import ClipTextCfg
    from llm2clip.data import read_dataset
    from llm2clip.defaults import minilm_dir, smollm2_dir
    from training.caption_retrieval import caption_retrieval, embed_texts, paraphrase_twin_accuracy
    from training.clip import default_model_cfg, train_clip
    from training.embed import CaptionEmbeddings, embed_captions
    from training.eval import evaluate
    from training.export import export_checkpoint
    from training.fact_probe import probe_caption_embeddings
    from training.stage1.config import Stage1Cfg
    from training.stage1.train import train_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(rows) - set(ROWS)
    if unknown:
        from llm2clip.errors import LLM2CLIPError

        raise LLM2CLIPError(f"unknown rows {sorted(unknown)}: choose among {', '.join(ROWS)}")
    t_start = time.perf_counter()
    paths = _data(out, cfg)
    train, val, test = (read_dataset(paths[s]) for s in ("train", "val", "test"))

    # the text encoders of the rows asked for (a subset run measures only those; stage 1's own before/after
    # on the val split is in the report whenever llm_cc runs)
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

    _say("caption retrieval accuracy of the text encoders (test split)")
    caption_acc = {name: _cached_json(out / "caption_retrieval" / f"{name}.json",
                                      lambda d=d: caption_retrieval(d, test))
                   for name, d in encoders.items()}

    _say("near twins, text side only: paraphrase of a closer to a than to its twin (raw text encoders)")
    text_twins = {name: _cached_json(out / "caption_retrieval" / f"{name}_twins.json",
                                     lambda d=d: paraphrase_twin_accuracy(
                                         lambda t, d=d: embed_texts(d, t, progress=False), test))
                  for name, d in encoders.items()}

    tcfg = stage2_cfg(cfg, len(train))
    results: dict[str, Any] = {}
    for row in rows:
        rdir = out / row
        t0 = time.perf_counter()
        facts = None  # clip77's text side has no frozen embedding to probe
        if row == "clip77":
            mcfg = default_model_cfg(cfg.embed_dim, 576, cfg.image_size, "clip77", 77)
            mcfg.text_tower = ClipTextCfg(context=77, width=cfg.clip77_width, layers=cfg.clip77_layers,
                                          heads=max(1, cfg.clip77_width // 64))
            _say(f"{row}: stage 2 (text tower trained jointly)")
            summary = train_clip(train, None, rdir / "ckpt", tcfg, model_cfg=mcfg, tokenizer_dir=smollm2_dir())
        else:
            emb = out / "embeddings" / row
            _say(f"{row}: caption embeddings")
            embed_captions(train, encoders[row], emb)
            caps = CaptionEmbeddings(emb)  # read once: the probe and the model's text width
            facts = _cached_json(rdir / "fact_probe.json", lambda caps=caps: probe_caption_embeddings(caps, train))
            mcfg = default_model_cfg(cfg.embed_dim, caps.dim, cfg.image_size, row, 512)
            _say(f"{row}: stage 2")
            summary = train_clip(train, emb, rdir / "ckpt", tcfg, model_cfg=mcfg)
        if not (rdir / "bundle" / "manifest.json").is_file():
            # fp32 only: the rows compare models, so every row is scored in the reference precision
            export_checkpoint(rdir / "ckpt", rdir / "bundle", precisions=("fp32",))
        metrics = _cached_json(rdir / "eval.json",
                               lambda b=rdir / "bundle": evaluate(b, paths["test"], precision="fp32"))
        twins = _cached_json(rdir / "text_twins.json", lambda b=rdir / "bundle": bundle_text_twins(b, test))
        # the first, uninterrupted pass's time is kept: a resumed run re-times only what it redid
        seconds = _cached_json(rdir / "seconds.json", lambda t0=t0: round(time.perf_counter() - t0, 1))
        results[row] = {"eval": metrics, "seconds": seconds, "text_twins": twins, "fact_probe": facts,
                        "final_loss": (summary["history"] or [{}])[-1].get("loss")}
        _say(f"{row}: t2i R@1 {metrics['t2i_r1']:.3f}, near-twin t2i {(metrics.get('near_twin') or {}).get('long', {}).get('t2i')}")

    throughput = None
    if "llm_nocc" in rows:
        throughput = _cached_json(out / "throughput.json", lambda: stage2_throughput(
            train, smollm2_dir(), out / "embeddings" / "llm_nocc", cfg))
    stage1 = None
    if (out / "stage1" / "stage1.json").is_file():
        s1_summary = json.loads((out / "stage1" / "stage1.json").read_text())
        stage1 = {k: s1_summary.get(k) for k in ("seconds", "contrastive", "mntp", "val")}
    report = {"command": command, "config": asdict(cfg), "rows": results, "caption_retrieval": caption_acc,
              "text_twins": text_twins, "stage1": stage1,
              "stage2_throughput": throughput, "seconds": round(time.perf_counter() - t_start, 1)}
    report = _portable(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    write_markdown(report, out)
    return report


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _direction(rows: dict[str, Any]) -> list[str]:
    """llm_cc minus each other row on the metrics the paper's claims are about."""
    if "llm_cc" not in rows:
        return []
    def pick(e: dict[str, Any]) -> dict[str, float | None]:
        tw = (e.get("near_twin") or {}).get("long") or {}
        return {"long t2i R@1": e["t2i_r1"], "long i2t R@1": e["i2t_r1"], "long t2i R@5": e["t2i_r5"],
                "twin t2i (long)": tw.get("t2i"), "twin i2t (long)": tw.get("i2t"),
                "short t2i R@1": e["short"]["t2i_r1"], "short i2t R@1": e["short"]["i2t_r1"]}
    cc = pick(rows["llm_cc"]["eval"])
    others = [r for r in rows if r != "llm_cc"]
    if not others:
        return []
    lines = ["", "## llm_cc minus each row (positive: LLM2CLIP ahead)", "",
             "| metric | " + " | ".join(f"vs {r}" for r in others) + " |", "|---|" + "---|" * len(others)]
    for metric, v in cc.items():
        cells = []
        for r in others:
            o = pick(rows[r]["eval"])[metric]
            cells.append("n/a" if v is None or o is None else f"{v - o:+.3f}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def _portable(obj: Any, out: Path) -> Any:
    """The report without this machine's paths: under DIR they become ``DIR/...``, elsewhere (the model
    cache) only the folder's name is kept, so the report can be committed and compared across machines."""
    if isinstance(obj, dict):
        return {k: _portable(v, out) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_portable(v, out) for v in obj]
    if isinstance(obj, str) and obj.startswith("/"):
        path = Path(obj)
        try:
            return str(Path("DIR") / path.resolve().relative_to(out.resolve()))
        except ValueError:
            return path.name
    return obj


def _twin_breakdown(rows: dict[str, Any]) -> list[str]:
    """Near-twin accuracy (long captions) by where the differing object is first named and by attribute."""
    by = {name: ((r["eval"].get("near_twin") or {}).get("long_by") or {}) for name, r in rows.items()}
    lines: list[str] = []
    for kind, title in (("mention", "where the caption first names the differing object (77-token cut)"),
                        ("attribute", "the attribute that differs")):
        keys = sorted({k for b in by.values() for k in b.get(kind, {})})
        if not keys:
            continue
        lines += ["", f"## Near twins by {title}", "",
                  "t2i / i2t accuracy on long captions (pairs in brackets).", "",
                  "| row | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, b in by.items():
            cells = []
            for k in keys:
                g = b.get(kind, {}).get(k)
                cells.append("n/a" if g is None else f"{_fmt(g['t2i'])} / {_fmt(g['i2t'])} ({g['n_pairs']})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _text_twins(report: dict[str, Any]) -> list[str]:
    """The text side of the near-twin test alone: can the encoder tell a's caption from its twin's?"""
    def cell(t: dict[str, Any] | None, key: str | None = None) -> str:
        if not t:
            return "n/a"
        g = t if key is None else t.get(key)
        return "n/a" if not g else _fmt(g["accuracy"])
    lines = ["", "## Near twins, text side only", "",
             "A fresh paraphrase of scene a's long caption must be closer to a's caption than to its twin's "
             "(chance 0.5; no image involved). Raw text encoders, then each row's exported text side "
             "(encoder + adapter, or the 77-token tower).", ""]
    entries = [(f"{n} (raw)", t) for n, t in (report.get("text_twins") or {}).items()]
    entries += [(f"{n} (row's bundle)", r.get("text_twins")) for n, r in report["rows"].items()]
    if not any(t for _, t in entries):
        return []
    attrs = sorted({a for _, t in entries for a in ((t or {}).get("by_attribute") or {})})
    lines += ["| " + " | ".join(["text side", "all", "named early (< 77 tokens)", "named late", *attrs]) + " |",
              "|---|---|---|---|" + "---|" * len(attrs)]
    for name, t in entries:
        by = (t or {}).get("by_attribute") or {}
        cells = [name, cell(t), cell(t, "early"), cell(t, "late"), *(cell(by, a) for a in attrs)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fact_probe(rows: dict[str, Any]) -> list[str]:
    """How much of each kind of scene fact the frozen text embedding (train split, long captions) keeps."""
    probes = {n: r.get("fact_probe") for n, r in rows.items() if r.get("fact_probe")}
    if not probes:
        return []
    from training.fact_probe import BOUND_GROUPS, LONG_GROUPS, SHORT_GROUPS

    groups = SHORT_GROUPS + LONG_GROUPS
    lines = ["", "## Scene facts kept by the frozen text embedding", "",
             "Linear probes on the train split's long-caption embeddings (3/4 fit, 1/4 scored): ROC AUC of yes/no "
             "facts among scenes with the same object count, 0.5 = lost, 1 = kept. The short caption names "
             f"{', '.join(SHORT_GROUPS)}; only the long caption states {', '.join(LONG_GROUPS)}.", "",
             "| text side | named in short | long only | " + " | ".join(groups) + " |",
             "|---|---|---|" + "---|" * len(groups)]
    for name, p in probes.items():
        lines.append(f"| {name} | {_fmt(p.get('named_in_short'))} | {_fmt(p.get('long_only'))} | "
                     + " | ".join(_fmt(p["by_group"].get(g)) for g in groups) + " |")
    bound = {n: p for n, p in probes.items() if p.get("bound") is not None}
    if bound:
        lines += ["", "Bound facts: which object carries the value (\"the bag is large\"), scored among scenes that "
                  "hold the class and the value equally often, so that only the binding varies: a bag of words "
                  "scores 0.5. The near twins that differ in cell, size or orientation need these.", "",
                  "| text side | bound | " + " | ".join(f"class + {g}" for g in BOUND_GROUPS) + " |",
                  "|---|---|" + "---|" * len(BOUND_GROUPS)]
        for name, p in bound.items():
            lines.append(f"| {name} | {_fmt(p['bound'])} | "
                         + " | ".join(_fmt(p["bound_by_group"].get(g)) for g in BOUND_GROUPS) + " |")
    return lines


def write_markdown(report: dict[str, Any], out: Path) -> None:
    rows = report["rows"]
    lines = ["# LLM2CLIP reproduction on the scene corpus", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += [f"Config: `{json.dumps(report['config'], sort_keys=True)}`", "",
              "## Retrieval on the test split", "",
              "Long captions are the main numbers; chance R@1 is 1/test scenes, near-twin chance 0.5 (ties count "
              "as misses).", "",
              "| row | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | short t2i R@1 | short i2t R@1 "
              "| twin t2i (long) | twin i2t (long) | twin t2i (short) |",
              "|---|" + "---|" * 11]
    for name, r in rows.items():
        e = r["eval"]
        tw = e.get("near_twin") or {}
        lines.append("| " + " | ".join([name, *(_fmt(e[k]) for k in REPORT_KEYS), _fmt(e["short"]["t2i_r1"]),
                                         _fmt(e["short"]["i2t_r1"]), _fmt(tw.get("long", {}).get("t2i")),
                                         _fmt(tw.get("long", {}).get("i2t")), _fmt(tw.get("short", {}).get("t2i"))])
                     + " |")
    lines += _direction(rows)
    lines += _twin_breakdown(rows)
    lines += _text_twins(report)
    lines += _fact_probe(rows)
    lines += ["", "## Caption retrieval accuracy (text encoder alone, test split)", "",
              "| text encoder | long->short | short->long | mean |", "|---|---|---|---|"]
    for name, c in report["caption_retrieval"].items():
        lines.append(f"| {name} | {_fmt(c.get('long_to_short'))} | {_fmt(c.get('short_to_long'))} | "
                     f"{_fmt(c.get('caption_retrieval'))} |")
    s1 = report.get("stage1")
    if s1:
        val = s1.get("val") or {}
        before = (val.get("before") or {}).get("caption_retrieval")
        after = (val.get("after") or {}).get("caption_retrieval")
        cc = s1.get("contrastive") or {}
        lines += ["", "## Stage 1", "",
                  f"Caption retrieval on the val split: {_fmt(before)} before, {_fmt(after)} after. "
                  f"Contrastive loss {cc.get('first_loss')} -> {cc.get('last_loss')} over {cc.get('steps')} steps, "
                  f"{cc.get('samples_s')} captions/s; {s1.get('seconds')} s."]
    t = report.get("stage2_throughput")
    if t:
        lines += ["", "## Stage-2 throughput", "",
                  f"Precomputed caption embeddings: {t['precomputed']} samples/s; LLM run online: {t['online']} "
                  f"samples/s ({t['speedup']}x)."]
    lines += ["", "## Time", "", "| part | seconds |", "|---|---|"]
    if s1:
        lines.append(f"| stage 1 | {s1.get('seconds')} |")
    for name, r in rows.items():
        lines.append(f"| {name} (embeddings, stage 2, export, eval) | {r.get('seconds')} |")
    lines += [f"| this invocation (a rerun reuses every cached step) | {report['seconds']} |", ""]
    (out / "report.md").write_text("\n".join(lines))
    try:
        _plot(report, out / "report.png")
    except ImportError:
        log.warning("matplotlib missing: no report.png")


def _plot(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["rows"])
    metrics = [("t2i_r1", "t2i R@1 (long)"), ("i2t_r1", "i2t R@1 (long)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, title) in zip(axes[:2], metrics, strict=True):
        ax.bar(names, [report["rows"][n]["eval"][key] for n in names], color="#2458d6")
        ax.set_title(title)
        ax.set_ylim(0, 1)
    twins = [((report["rows"][n]["eval"].get("near_twin") or {}).get("long") or {}).get("t2i", 0) for n in names]
    axes[2].bar(names, twins, color="#d68a24")
    axes[2].axhline(0.5, color="grey", lw=1, ls="--")
    axes[2].set_title("near-twin t2i accuracy (long)")
    axes[2].set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def preset(quick: bool, **overrides: Any) -> ReproCfg:
    base = QUICK if quick else ReproCfg()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
