"""What scoring one row of `llm2clip repro` costs, by three paths over the same bundle and split, in one run.

    .venv/bin/python bench/bench_repro_scoring.py --repro DIR [--row llm_nocc] [--split val] [--json OUT]
    .venv/bin/python bench/bench_repro_scoring.py --repro DIR --row llm_cc --candidate hardneg-400-top15

A row's scoring is its test scores through the exported bundle (``training.eval``: images, long and short
captions), the paraphrase near-twin probe through the same text encoder, and, for a frozen text encoder, the raw
encoder's caption retrieval and its own twin probe. The paths, each timed alone, one after the other:

- ``separate`` (the repro until this change): every probe loads its encoder and embeds its texts, so the
  split's long captions run through the bundle twice and through the raw encoder twice;
- ``shared``: one load per encoder, each distinct text embedded once (``training.caption_retrieval.MemoEncoder``);
- ``from_raw`` (the repro now, research/repro_scoring.py): the bundle's text side computed from the raw
  encoder's bf16 embeddings, the ones stage 2 trained on, through the row's adapter (fp32, from its checkpoint): one LLM pass
  over the split's texts serves every probe. Its scores are compared query by query with the fp32 bundle's
  (``research.stats.paired_cluster_test``, clustered by twin pair, Holm over the metrics).

Rows with a frozen text encoder are benched: minilm77, minilm, llm_nocc, and llm_cc with ``--candidate``, the
stage-1 folder name under DIR/stage1 whose seed-0 row is in DIR (``research.repro_rows.Candidate.folder``). Absolute times vary
with the machine and its load; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm2clip.data import Dataset, read_dataset  # noqa: E402
from training.caption_retrieval import (  # noqa: E402
    caption_retrieval,
    caption_retrieval_of,
    embed_texts,
    folder_encoder,
    paraphrase_twin_accuracy,
)
from training.eval import evaluate  # noqa: E402

METRICS = ("t2i_r1", "i2t_r1", "short_t2i_r1", "twin_t2i", "twin_i2t")


def separate(bundle: Path, folder: Path, cut: int, split: Path, ds: Dataset) -> dict[str, Any]:
    """The repro's scoring before the change: each probe its own load and its own pass."""
    from llm2clip.bundle import load_bundle
    from llm2clip.encoders.onnx import load_onnx_encoders

    scores = evaluate(bundle, split, precision="fp32", progress=False)
    _, txt = load_onnx_encoders(load_bundle(bundle))
    twins = paraphrase_twin_accuracy(txt.encode, ds)
    raw = caption_retrieval(folder, ds, max_tokens=cut, progress=False)
    raw_twins = paraphrase_twin_accuracy(lambda t: embed_texts(folder, t, max_tokens=cut, progress=False), ds)
    return {"eval": scores, "twins": twins, "raw": raw, "raw_twins": raw_twins}


def shared(bundle: Path, folder: Path, cut: int, split: Path, ds: Dataset) -> dict[str, Any]:
    """The fp32 bundle with one load per encoder, each text once (the repro between the two changes)."""
    from research.repro_scoring import RowScoring

    scoring = RowScoring(bundle)
    scores = scoring.evaluate(split, per_query=True)  # the per-query ranks: numpy on the same vectors
    twins = scoring.text_twins(ds)
    raw_enc = folder_encoder(folder, cut)
    raw = caption_retrieval_of(raw_enc, ds, progress=False)
    return {"eval": scores, "twins": twins, "raw": raw, "raw_twins": paraphrase_twin_accuracy(raw_enc.encode, ds),
            "texts": {"bundle": scoring.text.encoded, "raw": raw_enc.encoded}}


def from_raw(bundle: Path, folder: Path, cut: int, split: Path, ds: Dataset) -> dict[str, Any]:
    """The repro now: one bf16 pass of the raw encoder for every probe, the bundle's image encoder as it is."""
    from research.repro_scoring import RawEncoders, RowScoring, ThroughAdapter, UnitView

    raw = RawEncoders().get(folder, cut)
    scoring = RowScoring(bundle, ThroughAdapter.from_checkpoint(raw, bundle.parent / "ckpt"))
    scores, twins = scoring.evaluate(split, per_query=True), scoring.text_twins(ds)
    unit = UnitView(raw)
    acc = caption_retrieval_of(unit, ds, progress=False)
    return {"eval": scores, "twins": twins, "raw": acc, "raw_twins": paraphrase_twin_accuracy(unit.encode, ds),
            "texts": {"raw": raw.encoded}}


def agreement(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """``candidate`` (from_raw) against the fp32 bundle query by query: both runs' means, the share of queries
    with the same outcome, and the paired test, Holm over ``METRICS``."""
    from research.outcomes import metric_outcomes
    from research.stats import holm, paired_cluster_test

    out, pvalues = {}, {}
    for metric in METRICS:
        a = metric_outcomes([candidate["eval"]["per_query"]], metric)
        b = metric_outcomes([reference["eval"]["per_query"]], metric)
        if a is None or b is None:
            continue
        test = paired_cluster_test(a.hits, b.hits, a.clusters)
        out[metric] = {"from_raw": float(a.hits.mean()), "fp32_bundle": float(b.hits.mean()),
                       "same_outcome": float((a.hits == b.hits).mean()), "difference": test.difference,
                       "ci95": list(test.ci95), "p": test.p}
        pvalues[metric] = test.p
    for metric, p in holm(pvalues).items():
        out[metric]["p_holm"] = p
    return out


def main(argv: list[str] | None = None) -> int:
    from research.repro_config import ReproCfg
    from research.repro_rows import row_spec

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--repro", type=Path, required=True, help="a repro run folder with the row's seed-0 bundle")
    ap.add_argument("--row", default="llm_nocc", choices=("minilm77", "minilm", "llm_nocc", "llm_cc"))
    ap.add_argument("--candidate", help="llm_cc only: its stage-1 folder name, e.g. hardneg-400-top15")
    ap.add_argument("--split", default="val", choices=("val", "test"), help="the split to score (default val)")
    ap.add_argument("--order", default="separate,shared,from_raw",
                    help="the order the paths run in (all three; rerun in another order to see the warm-up's share)")
    ap.add_argument("--json", type=Path, help="write the result here as well")
    args = ap.parse_args(argv)
    from llm2clip.defaults import minilm_dir, smollm2_dir

    if (args.row == "llm_cc") != (args.candidate is not None):
        ap.error("--candidate goes with --row llm_cc, and llm_cc needs it")
    spec = row_spec("llm_nocc" if args.row == "llm_cc" else args.row, ReproCfg())  # llm_cc cuts where it does
    if args.candidate:
        bundle = args.repro / f"llm_cc-{args.candidate}" / "seed-0" / "bundle"
        folder = args.repro / "stage1" / args.candidate / "seed-0"
    else:
        bundle = args.repro / spec.key / "seed-0" / "bundle"
        folder = minilm_dir() if spec.encoder == "minilm" else smollm2_dir()
    split = args.repro / "data" / args.split
    if not (bundle / "manifest.json").is_file() or not (split / "items.jsonl").is_file():
        ap.error(f"{bundle} or {split} is missing: run `llm2clip repro --out {args.repro} --rows {args.row}` first")
    ds = read_dataset(split)
    result: dict[str, Any] = {"row": args.row, "candidate": args.candidate, "split": args.split, "n": len(ds), "seconds": {}}
    paths, runs = {"separate": separate, "shared": shared, "from_raw": from_raw}, {}
    order = args.order.split(",")
    if sorted(order) != sorted(paths):
        ap.error(f"--order must name each of {', '.join(paths)} once")
    result["order"] = order
    for name in order:
        path = paths[name]
        t0 = time.perf_counter()
        runs[name] = path(bundle, folder, spec.max_tokens, split, ds)
        result["seconds"][name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {result['seconds'][name]} s", file=sys.stderr, flush=True)
    sec = result["seconds"]
    result["speedup"] = {"shared": round(sec["separate"] / sec["shared"], 2),
                         "from_raw": round(sec["separate"] / sec["from_raw"], 2)}
    result["texts"] = {k: runs[k].get("texts") for k in ("shared", "from_raw")}
    result["same_scores_shared"] = {k: runs["shared"][k] == runs["separate"][k] for k in ("twins", "raw_twins")}
    result["same_scores_shared"]["eval"] = all(runs["shared"]["eval"][m] == runs["separate"]["eval"][m]
                                               for m in ("t2i_r1", "i2t_r1", "long", "short", "near_twin"))
    result["from_raw_vs_fp32"] = agreement(runs["shared"], runs["from_raw"])
    result["twins"] = {k: (runs[k]["twins"] or {}).get("accuracy") for k in runs}
    result["raw"] = {k: runs[k]["raw"]["caption_retrieval"] for k in runs}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
