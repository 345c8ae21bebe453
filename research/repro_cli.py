"""`llm2clip repro`: the paper's ablation rows on the scene corpus, with a report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# research.repro is imported when the command runs, so that `llm2clip --help` does not import torch
from llm2clip.cliargs import add_command, positive_int
from research.repro_config import ROWS, preset


def add_parser(subparsers) -> None:
    r = add_command(subparsers, "repro", run)
    r.add_argument("--out", required=True, type=Path, help="work and report folder")
    r.add_argument("--quick", action="store_true", help="tiny data and steps: the same code in minutes")
    r.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    r.add_argument("--train-scenes", type=positive_int, help="override the preset's training scenes")
    r.add_argument("--epochs", type=positive_int, help="override the preset's stage-2 epochs")
    r.add_argument("--stage1-steps", type=positive_int, help="override the preset's stage-1 steps")
    r.add_argument("--stage1-positives", choices=["all", "long"],
                   help="stage-1 positive views: long (the long caption and its paraphrases only; the preset) "
                        "or all (long with short, the paper's pairs)")
    r.add_argument("--stage1-hard-negatives", action=argparse.BooleanOptionalAction, default=None,
                   help="stage 1 with generator near twins as hard negatives, half of each micro-batch (the "
                        "preset; --no-stage1-hard-negatives turns them off)")
    r.add_argument("--seed", type=int)


def run(args: argparse.Namespace) -> int:
    """reproduce the paper's ablation rows (clip77, minilm, llm_nocc, llm_cc) with a report

    Train every row with the same vision tower, data, steps and seed; evaluate each on the test split
    (long/short/near twins), measure caption retrieval accuracy of each text encoder and stage-2 throughput;
    write DIR/report.md, DIR/report.json, DIR/report.png and one model bundle per row in DIR/<row>/bundle. Every
    step is cached: a rerun continues.
    """
    from research.repro import run_repro

    cfg = preset(args.quick, train_scenes=args.train_scenes, epochs=args.epochs, stage1_steps=args.stage1_steps,
                 stage1_positives=args.stage1_positives,
                 stage1_hard_negatives=args.stage1_hard_negatives, seed=args.seed)
    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    report = run_repro(args.out, cfg, rows, command=_command(args))
    summary = {row: {k: r["eval"][k] for k in ("t2i_r1", "i2t_r1")} for row, r in report["rows"].items()}
    sys.stdout.write(json.dumps({"report": str(args.out / "report.md"), "rows": summary}) + "\n")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line the report records: DIR for the folder, and only the flags that were given."""
    flags = [("--quick", args.quick), (f"--rows {args.rows}", args.rows != ",".join(ROWS)),
             (f"--train-scenes {args.train_scenes}", args.train_scenes is not None),
             (f"--epochs {args.epochs}", args.epochs is not None),
             (f"--stage1-steps {args.stage1_steps}", args.stage1_steps is not None),
             (f"--stage1-positives {args.stage1_positives}", args.stage1_positives is not None),
             ("--stage1-hard-negatives" if args.stage1_hard_negatives else "--no-stage1-hard-negatives",
              args.stage1_hard_negatives is not None),
             (f"--seed {args.seed}", args.seed is not None)]
    return " ".join(["llm2clip repro --out DIR", *(f for f, on in flags if on)])
