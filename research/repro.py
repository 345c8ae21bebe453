"""`llm2clip repro`: the paper's ablation rows on the scene corpus, same vision tower, data, steps, seeds.

Rows (each writes DIR/<row>/seed-<k>/{ckpt,bundle}, see research/repro_rows.py, and is scored on the test split):
  clip77     a CLIP text transformer with a 77-token context, trained from scratch jointly (vanilla CLIP)
  minilm77   all-MiniLM-L6-v2 cut at 77 tokens + adapter: CLIP's pretrained but short text encoder's stand-in
  minilm     all-MiniLM-L6-v2 mean pooled + adapter (the paper's BERT-type row)
  llm_nocc   SmolLM2-135M, bidirectional + mean pooled, no caption-contrastive fine-tuning
  llm_cc     SmolLM2-135M after stage 1 (LLM2CLIP): the preset's stage-1 recipe and steps, or with ``select``
             the ones chosen on the val split
  llm_cc:<v> each stage-1 recipe of ``STAGE1_VARIANTS`` at the preset's steps (the controls)
The first five are the paper's table (``MAIN_ROWS``, the default). With ``select``, llm_cc is chosen on the val
split only (research/selection.py); either way DIR/selection.json records where each setting comes from, and
the test split is generated after the choices and scores each final row once per seed (research/repro_scoring.py:
one pass of a frozen text encoder over the test captions serves its row, every seed and its raw probes). Also: caption retrieval
accuracy of each text encoder on the test split, and stage-2 samples/s with precomputed caption embeddings
against running the LLM online. Every step is cached in DIR, so an interrupted run (or one with more seeds) continues, and
`--rows` runs a subset.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm2clip.config import TextCfg
from llm2clip.data import Dataset, generate_scenes, read_dataset
from llm2clip.defaults import smollm2_dir
from llm2clip.errors import LLM2CLIPError
from research.fact_probe import probe_caption_embeddings
from research.report import portable, write_report
from research.repro_config import LLM_CC_SOURCE, MAIN_ROWS, ROWS, STAGE1_VARIANTS, ReproCfg, vision_cfg
from research.repro_records import check_records_data, drop_orphans, row_recorded, val_recorded
from research.repro_rows import (
    STAGE1_TIMED_APART,
    STAGE2_SUMMARY,
    Candidate,
    RowSpec,
    Work,
    candidate_spec,
    row_spec,
    say,
    text_encoder,
    train_bundle,
)
from research.repro_scoring import BUNDLE_SCORING, FROZEN_SCORING, RowScoring, ThroughAdapter, UnitView
from research.repro_styles import STYLES_FILE, drops, paired_tests, style_outcomes, unseen_corpus
from research.seed_stats import average
from research.selection import score_on_val, select, selection_record
from training.caption_retrieval import caption_retrieval_of, paraphrase_twin_accuracy
from training.clip import default_model_cfg, load_images, normalize
from training.clip_recipe import clip_loss
from training.embed import CaptionEmbeddings

_say = say
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}  # added to the data seed: each split its own scenes


def _cached_json(path: Path, fn: Callable[[], Any]) -> Any:
    if path.is_file():
        return json.loads(path.read_text())
    value = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True))
    return value


def _data(out: Path, cfg: ReproCfg, split: str) -> Path:
    """The ``split`` corpus of this run (generated once): the test split only once every choice is made."""
    path = out / "data" / split
    size = {"train": cfg.train_scenes, "val": cfg.val_scenes, "test": cfg.test_scenes}[split]
    if not (path / "items.jsonl").is_file():
        _say(f"scenes: {split} ({size})")
        generate_scenes(path, size, split, cfg.seed + SPLIT_SEEDS[split])
    check_records_data(out, split)  # records carried in from another machine were made on these very scenes
    return path


def stage2_throughput(dataset: Dataset, llm_dir: Path, emb_dir: Path, cfg: ReproCfg) -> dict[str, float]:
    """Samples/s of a stage-2 step with precomputed embeddings vs with the frozen LLM run in the step."""
    from llm2clip.encoders.torch_backend import TorchTextEncoder
    from llm2clip.model import LLM2CLIP

    caps = CaptionEmbeddings(emb_dir)
    model_cfg = default_model_cfg(cfg.embed_dim, caps.dim, cfg.image_size, "llm", TextCfg.max_tokens,
                                  vision_cfg(cfg))
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


FIXED = {
    "the rows and their controls": "fixed in advance: the paper's ablation rows and issue 14's controls",
    "stage 2 (batch size, learning rate, embedding width)": "the preset's, set before this protocol existed; "
    "not re-selected by this run",
    "the vision tower (DINOv2 ViT-S/14 at 224 px, locked, read at block 8) and stage 2's epochs (20)": "chosen on "
    "the val split before this run, over EfficientNet-Lite0 at 160 px, trained, 10 epochs "
    "(docs/results/vision-side.md); not re-selected by it",
    "stage 1 (batch, paraphrases, learning rate, LoRA rank, temperature)": "the preset's and Stage1Cfg's defaults; "
    "not selected by this run",
    "stage 1's LoRA on the top 15 of SmolLM2's 30 layers": "chosen on the val split before this run, over every "
    "layer, with llm_cc:hardneg at 400 steps and one seed (bench/RESULTS.md, 12); not re-selected by it",
    "MNTP steps of llm_cc:mntp": "the preset's stage1_mntp_steps; not selected by this run",
    "scoring a frozen text encoder's row from its bf16 caption vectors through the row's adapter (clip77: its "
    "fp32 ONNX bundle)": "checked on the val split against the exported fp32 ONNX graph, query by query, with "
    "minilm, llm_nocc and a 50-step llm_cc before this run (bench/RESULTS.md, 14); not re-checked by it",
}


def select_llm_cc(work: Work, val_dir: Path) -> tuple[Candidate, list[dict[str, Any]]]:
    """llm_cc's stage-1 recipe (among ``STAGE1_VARIANTS`` at the preset's steps), then its step count (the preset's
    and ``stage1_step_probes``), each chosen on the val corpus; returns the choice and the records."""
    cfg = work.cfg

    def build(c: Candidate) -> Callable[[int], Path]:
        spec = candidate_spec(c)
        # a seed scored on val already (its val.json, kept by research.repro_records) is not trained again
        def bundle(k: int) -> Path:
            rdir = work.row_dir(spec, k)
            if recorded := val_recorded(rdir):
                return recorded
            drop_orphans(rdir)
            return train_bundle(work, spec, k)

        return bundle

    recipes = {f"llm_cc:{v}": Candidate(v, cfg.stage1_steps, cfg.stage1_lora_layers) for v in STAGE1_VARIANTS}
    _say(f"choosing llm_cc's stage-1 recipe on the val split among {', '.join(recipes)}")
    before = _scored_on_test(work, recipes)
    first = select("llm_cc: stage-1 recipe", {n: build(c) for n, c in recipes.items()}, cfg.seeds, val_dir)
    first["test_scored_before"] = before
    variant = recipes[first["chosen"]].variant
    counts = {f"{s} steps": Candidate(variant, s, cfg.stage1_lora_layers)
              for s in sorted({*cfg.stage1_step_probes, cfg.stage1_steps})}
    _say(f"choosing llm_cc:{variant}'s stage-1 steps on the val split among {', '.join(counts)}")
    before = _scored_on_test(work, counts)
    second = select(f"llm_cc: stage-1 steps of llm_cc:{variant}", {n: build(c) for n, c in counts.items()},
                    cfg.seeds, val_dir, steps={n: c.steps for n, c in counts.items()})
    second["test_scored_before"] = before
    return counts[second["chosen"]], [first, second]


def _scored_on_test(work: Work, candidates: dict[str, Candidate]) -> list[str]:
    """The candidates that some seed has scored on the test split before the choice among them: control rows
    run first, or carried in by ``research.repro_records``. The choice still reads val only; the report says so."""
    return [name for name, c in candidates.items()
            if any((work.row_dir(candidate_spec(c), k) / "eval.json").is_file() for k in range(work.cfg.seeds))]


@dataclass
class _Test:
    """The test split, scored once per final row and seed; ``unseen``: its scenes restyled into the unseen
    grammar (research/repro_styles.py)."""

    dataset: Dataset
    path: Path
    unseen: Path


def _row_scoring(work: Work, spec: RowSpec, k: int, bundle: Path) -> RowScoring:
    """How the row is scored (research/repro_scoring.py): a frozen encoder's bf16 vectors, shared with the raw
    probes and every seed of a row without stage 1, through the row's adapter; clip77 through its bundle."""
    if spec.encoder is None:
        return RowScoring(bundle)
    folder = text_encoder(work, spec, k)
    assert folder is not None
    return RowScoring(bundle, ThroughAdapter.from_checkpoint(work.raw.get(folder, spec.max_tokens),
                                                            bundle.parent / "ckpt"))


def _drop_stale_scores(rdir: Path, scoring: str) -> None:
    """Scores cached by a run that scored this row another way (an older version) are made again."""
    cached = rdir / "eval.json"
    if cached.is_file() and json.loads(cached.read_text()).get("scoring", BUNDLE_SCORING) != scoring:
        for name in ("eval.json", "text_twins.json", "seconds.json", STYLES_FILE):
            (rdir / name).unlink(missing_ok=True)


def _run_seed(work: Work, spec: RowSpec, k: int, test: _Test) -> tuple[dict[str, Any], dict[str, Any]]:
    """One row at seed ``k``: stage 2 and export (cached), the test scores, the text-only twin probe; and its
    per-query outcomes on both caption styles (``research.repro_styles.style_outcomes``). A seed whose records are
    all there (``research.repro_records``) is read from them: neither its models nor its bundle are needed."""
    rdir = work.row_dir(spec, k)
    _drop_stale_scores(rdir, BUNDLE_SCORING if spec.encoder is None else FROZEN_SCORING)
    scoring = None
    if not row_recorded(rdir, spec.encoder is not None):
        drop_orphans(rdir)
        bundle = train_bundle(work, spec, k)
        if spec.stage1 is not None:  # a stage-1 row is also a --select candidate: its val scores are kept for one
            score_on_val(bundle, work.out / "data" / "val")  # (val.json), chosen on only by a --select run
        scoring = _row_scoring(work, spec, k, bundle)
    t0 = time.perf_counter()
    metrics = _cached_json(rdir / "eval.json", lambda: scoring.evaluate(test.path))
    twins = _cached_json(rdir / "text_twins.json", lambda: scoring.text_twins(test.dataset))
    styles = _cached_json(rdir / STYLES_FILE, lambda: style_outcomes(scoring, test.path, test.unseen))
    facts = None
    if spec.encoder is not None:  # clip77's text side is trained jointly: nothing frozen to probe
        emb = work.embeddings_dir(spec, k)
        facts = _cached_json(rdir / "fact_probe.json",
                             lambda: probe_caption_embeddings(CaptionEmbeddings(emb), work.train))
    # the first, uninterrupted pass's time is kept: a resumed run re-times only what it redid
    seconds = _cached_json(rdir / "seconds.json", lambda: round(time.perf_counter() - t0, 1))
    stage2 = json.loads((rdir / STAGE2_SUMMARY).read_text())
    stage1_in_seconds = spec.stage1 is not None and not stage2.get(STAGE1_TIMED_APART)
    return {"seed": work.seed(k), "eval": metrics, "seconds": round(stage2["seconds"] + seconds, 1),
            "stage1_in_seconds": stage1_in_seconds, "text_twins": twins, "fact_probe": facts,
            "final_loss": stage2.get("final_loss"), "unseen_eval": styles["unseen_eval"]}, styles


def _run_row(work: Work, name: str, spec: RowSpec, test: _Test) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every seed of one row; ``eval`` and the other records are means over seeds, ``seeds`` keeps each, ``styles``
    has each seed's own-style and unseen-style R@1 and drop. Also returns each seed's per-query outcomes."""
    seeds, outcomes = zip(*(_run_seed(work, spec, k, test) for k in range(work.cfg.seeds)), strict=True)
    twin = (seeds[0]["eval"].get("near_twin") or {}).get("long", {}).get("t2i")
    _say(f"{name}: t2i R@1 {seeds[0]['eval']['t2i_r1']:.3f}, near-twin t2i {twin} (seed {seeds[0]['seed']})")
    row = {key: average([s[key] for s in seeds]) if seeds[0][key] is not None else None
           for key in ("eval", "text_twins", "fact_probe", "final_loss", "unseen_eval")}
    row.update(folder=spec.key, seconds=round(sum(s["seconds"] for s in seeds), 1), seeds=list(seeds),
               stage1_in_seconds=any(s["stage1_in_seconds"] for s in seeds), stage1=_stage1_summaries(work, spec),
               styles=drops(list(outcomes)))
    return row, list(outcomes)


def _raw_text_side(work: Work, spec: RowSpec, k: int, test: _Test) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One raw text encoder (seed ``k`` of a stage-1 row) on the test split, cut where its row cuts captions:
    caption retrieval accuracy and the paraphrase near-twin probe (cached), from the vectors its row was scored
    with (``Work.raw``)."""
    cache, tag = work.out / "caption_retrieval", spec.key + (f"-seed-{k}" if spec.stage1 else "")
    acc_file, twins_file = cache / f"{tag}.json", cache / f"{tag}_twins.json"
    if acc_file.is_file() and twins_file.is_file():  # recorded: the encoder is not needed
        return json.loads(acc_file.read_text()), json.loads(twins_file.read_text())
    folder = text_encoder(work, spec, k)
    assert folder is not None
    unit = UnitView(work.raw.get(folder, spec.max_tokens))
    acc = _cached_json(acc_file, lambda: caption_retrieval_of(unit, test.dataset))
    twins = _cached_json(twins_file, lambda: paraphrase_twin_accuracy(unit.encode, test.dataset))
    return acc, twins


def _text_side(work: Work, specs: dict[str, RowSpec], test: _Test) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each raw text encoder alone on the test split, averaged over seeds (a frozen encoder has one): the
    pretrained ones and llm_cc's. The other stage-1 controls are left out (each costs two LLM passes over the
    test captions per seed); their text side through their bundle is in every row's ``text_twins``."""
    _say("the text encoders alone on the test split: caption retrieval, near twins by paraphrase")
    done: dict[str, tuple[Any, Any]] = {}
    for name, spec in specs.items():
        if spec.encoder is None or spec.stage1 is not None and name != "llm_cc":
            continue
        if spec.key not in done:
            seeds = [_raw_text_side(work, spec, k, test)
                     for k in range(work.cfg.seeds if spec.stage1 is not None else 1)]
            done[spec.key] = (average([a for a, _ in seeds]), average([t for _, t in seeds]))
    names = {name: spec.key for name, spec in specs.items()
             if spec.key in done and (spec.stage1 is None or name == "llm_cc")}
    return {n: done[key][0] for n, key in names.items()}, {n: done[key][1] for n, key in names.items()}


def _stage1_summaries(work: Work, spec: RowSpec) -> list[dict[str, Any]] | None:
    """Each seed's stage-1 summary of a stage-1 row (time, losses, val caption retrieval before and after)."""
    if spec.stage1 is None:
        return None
    out = []
    for k in range(work.cfg.seeds):
        summary = json.loads((work.stage1_dir(spec.stage1, k) / "stage1.json").read_text())
        out.append({key: summary.get(key) for key in ("seconds", "contrastive", "mntp", "val")})
    return out


def preset_llm_cc(cfg: ReproCfg) -> tuple[Candidate, dict[str, str]]:
    """llm_cc as the preset gives it (a run without ``select``), and the report's line on where it comes from."""
    if cfg.llm_cc_recipe not in STAGE1_VARIANTS:
        raise LLM2CLIPError(f"llm_cc's recipe {cfg.llm_cc_recipe!r} is not one of {', '.join(STAGE1_VARIANTS)}")
    chosen = Candidate(cfg.llm_cc_recipe, cfg.llm_cc_steps, cfg.stage1_lora_layers)
    return chosen, {f"llm_cc = {chosen.label}": LLM_CC_SOURCE}


def run_repro(out: str | Path, cfg: ReproCfg, rows: tuple[str, ...] = MAIN_ROWS,
              command: str | None = None, select: bool = False) -> dict[str, Any]:
    """Run (or continue) the rows in ``out`` and write the report; returns report.json's content.

    With ``select``, llm_cc's recipe and steps are chosen on the val split first, among every recipe of
    ``STAGE1_VARIANTS`` and the step probes (DIR/selection.json); without it llm_cc is the preset's and the
    report says where that comes from. The test split is generated and read only after the choices."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise LLM2CLIPError(f"unknown rows {sorted(unknown)}: choose among {', '.join(ROWS)} (or all)")
    if cfg.seeds < 1:
        raise LLM2CLIPError(f"--seeds must be at least 1, got {cfg.seeds}")
    chosen, choices, fixed = None, [], dict(FIXED)
    if not select and "llm_cc" in rows:
        chosen, given = preset_llm_cc(cfg)
        fixed.update(given)
    t_start = time.perf_counter()
    train, val_dir = read_dataset(_data(out, cfg, "train")), _data(out, cfg, "val")
    work = Work(out, cfg, train, read_dataset(val_dir))
    if select:
        chosen, choices = select_llm_cc(work, val_dir)
    selection = portable(selection_record(choices, fixed), out)
    (out / "selection.json").write_text(json.dumps(selection, indent=2, sort_keys=True))
    test_dir = _data(out, cfg, "test")
    test = _Test(read_dataset(test_dir), test_dir, unseen_corpus(out, test_dir, cfg.seed + SPLIT_SEEDS["test"]))
    specs = {row: row_spec(row, cfg, chosen) for row in rows}
    scored = {row: _run_row(work, row, spec, test) for row, spec in specs.items()}
    results = {row: record for row, (record, _) in scored.items()}
    if chosen is not None and "llm_cc" in results:
        results["llm_cc"]["chosen"] = chosen.label
    caption_acc, text_twins = _text_side(work, specs, test)
    throughput = None
    if "llm_nocc" in rows:
        throughput = _cached_json(out / "throughput.json", lambda: stage2_throughput(
            train, smollm2_dir(), work.embeddings_dir(specs["llm_nocc"], 0), cfg))
    report = {"command": command, "config": asdict(cfg), "rows": results, "caption_retrieval": caption_acc,
              "text_twins": text_twins, "selection": selection, "stage2_throughput": throughput,
              "paired_tests": paired_tests({row: o for row, (_, o) in scored.items()}, results),
              "seconds": round(time.perf_counter() - t_start, 1)}
    return write_report(report, out)
