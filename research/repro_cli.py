"""`llm2clip repro`: the paper's ablation rows on the scene corpus, with a report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# research.repro is imported when the command runs, so that `llm2clip --help` does not import torch
from llm2clip.cliargs import add_command, positive_int
from research.repro_config import MAIN_ROWS, ROWS, preset


def add_parser(subparsers) -> None:
    r = add_command(subparsers, "repro", run)
    r.add_argument("--out", required=True, type=Path, help="work and report folder")
    r.add_argument("--quick", action="store_true", help="tiny data and steps: the same code in minutes")
    r.add_argument("--rows", default=",".join(MAIN_ROWS),
                   help=f"comma-separated subset of {','.join(ROWS)}, or 'all' (default: the paper's table, "
                        f"{','.join(MAIN_ROWS)}); llm_cc:<recipe> are the stage-1 controls")
    r.add_argument("--select", action="store_true",
                   help="choose llm_cc's stage-1 recipe and steps on the val split: train and score on val every "
                        "llm_cc:<recipe> candidate and a step-count probe (hours on a CPU). Without it llm_cc is "
                        "the preset's, and the report says where that comes from")
    r.add_argument("--train-scenes", type=positive_int, help="override the preset's training scenes")
    r.add_argument("--epochs", type=positive_int, help="override the preset's stage-2 epochs")
    r.add_argument("--stage1-steps", type=positive_int, help="override the preset's stage-1 steps")
    r.add_argument("--seeds", type=positive_int,
                   help="training seeds per row, stage 1 and stage 2 (default 1): tables show mean ± sd; each "
                        "seed's folders are cached, so a rerun with more seeds trains only the new ones")
    r.add_argument("--seed", type=int, help="the data's seed; seed k of a row trains with seed + k")


def run(args: argparse.Namespace) -> int:
    """reproduce the paper's ablation rows (clip77, minilm77, minilm, llm_nocc, llm_cc) and stage-1 controls

    Train every row with the same vision tower, data, steps and seeds. llm_cc is the preset's stage-1 recipe
    and steps; with --select they are chosen on the val split, which has near twins of its own, among the
    llm_cc:<recipe> control rows and a step-count probe. DIR/selection.json records each choice, its candidates
    and their val scores, and where every setting not chosen by the run comes from. Then evaluate each row on
    the test split, once per seed (long/short/near twins), measure caption retrieval accuracy of each text
    encoder and stage-2 throughput; write DIR/report.md, DIR/report.json, DIR/report.png and one model bundle
    per row and seed in DIR/<row>/seed-<k>/bundle. Every step is cached: a rerun continues.
    """
    from research.repro import run_repro

    # --stage1-steps is every stage-1 run's count: the controls', the selection's and the preset's llm_cc
    cfg = preset(args.quick, train_scenes=args.train_scenes, epochs=args.epochs, stage1_steps=args.stage1_steps,
                 llm_cc_steps=args.stage1_steps, seed=args.seed, seeds=args.seeds)
    rows = ROWS if args.rows.strip() == "all" else tuple(r.strip() for r in args.rows.split(",") if r.strip())
    report = run_repro(args.out, cfg, rows, command=_command(args), select=args.select)
    summary = {row: {k: r["eval"][k] for k in ("t2i_r1", "i2t_r1")} for row, r in report["rows"].items()}
    sys.stdout.write(json.dumps({"report": str(args.out / "report.md"), "rows": summary}) + "\n")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line the report records: DIR for the folder, and only the flags that were given."""
    flags = [("--quick", args.quick), ("--select", args.select),
             (f"--rows {args.rows}", args.rows != ",".join(MAIN_ROWS)),
             (f"--train-scenes {args.train_scenes}", args.train_scenes is not None),
             (f"--epochs {args.epochs}", args.epochs is not None),
             (f"--stage1-steps {args.stage1_steps}", args.stage1_steps is not None),
             (f"--seeds {args.seeds}", args.seeds is not None),
             (f"--seed {args.seed}", args.seed is not None)]
    return " ".join(["llm2clip repro --out DIR", *(f for f, on in flags if on)])
