"""Carry a repro run's results from one machine to another without its models.

Usage: python -m research.repro_records pack DIR RECORDS
       python -m research.repro_records unpack RECORDS DIR

The full protocol (``llm2clip repro --select --rows all --seeds 3``) trains every stage-1 recipe three times: many
more CPU hours than one machine may keep its disk. ``pack`` copies what the report is made of, a few MB with no
path of the machine in it: each row and seed's scores (eval.json, text_twins.json, styles.json with its per-query
outcomes, fact_probe.json, seconds.json, stage2.json, and a candidate's val.json), each stage-1 run's summary
(its time, losses and val caption retrieval), the raw encoders' test records and the stage-2 throughput, with the
digests of the scenes they were scored on (records.json). ``unpack`` puts them into a run folder, fresh or not,
never over what is there: a row seed with any record of its own keeps all of its own. ``llm2clip repro --out DIR`` then reads a recorded seed instead of training it
again, so a long protocol can go on over several machines, the records committed between them. Records made on
other scenes are refused: the scenes are generated again from the seed, and their digests must match.

A protocol in parts: each machine runs some rows with every seed (``llm2clip repro --out DIR --rows
llm_cc:longpos,llm_cc:paper --seeds 3``; a stage-1 row keeps its val scores too), packs, and the records are
committed; the last one unpacks them all and runs ``--select --rows all --seeds 3``, which trains only what no
record holds (the step-count probe) and chooses on the recorded val scores. The control rows' test scores then
exist before the choice is made; the choice reads val only, and the report says so (each choice lists the
candidates whose test scores came first).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from llm2clip.errors import LLM2CLIPError
from research.report import portable

MANIFEST = "records.json"
FORMAT = "llm2clip-repro-records/1"
# beside a row seed's bundle: what the report reads of it
ROW_FILES = ("eval.json", "text_twins.json", "styles.json", "fact_probe.json", "seconds.json", "stage2.json")
VAL_FILE = "val.json"  # a selection candidate's val scores (research.selection.VAL_SCORE)
STAGE1_KEYS = ("seconds", "contrastive", "mntp", "val")  # of stage1.json: what the report shows
SPLITS = ("train", "val", "test")


def row_recorded(rdir: Path, frozen: bool) -> bool:
    """Every record of a row seed's scoring is in ``rdir`` (a frozen text encoder's row also has its fact probe)."""
    return all((rdir / n).is_file() for n in ROW_FILES if frozen or n != "fact_probe.json")


def val_recorded(rdir: Path) -> Path | None:
    """The bundle path whose val.json already holds the seed's val scores (the bundle itself may be gone)."""
    return rdir / "bundle" if (rdir / VAL_FILE).is_file() else None


def drop_orphans(rdir: Path) -> None:
    """Before a seed is trained again because its bundle is gone, the records of the gone model are deleted, so no
    report mixes the scores of two models."""
    if not (rdir / "bundle" / "manifest.json").is_file():
        for name in (*ROW_FILES, VAL_FILE):
            (rdir / name).unlink(missing_ok=True)


def _digest(items: Path) -> str:
    return hashlib.sha256(items.read_bytes()).hexdigest()


def check_records_data(out: Path, split: str) -> None:
    """Records carried into ``out`` must have been scored on its ``split`` scenes (same items, same digest)."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return
    want = json.loads(manifest.read_text()).get("data", {}).get(split)
    items = out / "data" / split / "items.jsonl"
    if want is not None and items.is_file() and _digest(items) != want:
        raise LLM2CLIPError(f"the records in {out} were made on other {split} scenes than {items.parent}: run with "
                            "the settings they were made with (see their report), or in a folder without them")


def _record_files(run: Path) -> list[Path]:
    """The records of run folder ``run``, relative to it."""
    files = [p for p in run.glob("*/seed-*/*.json") if p.name in (*ROW_FILES, VAL_FILE)]
    files += list(run.glob("stage1/*/seed-*/stage1.json"))
    files += list(run.glob("caption_retrieval/*.json"))
    files += [p for p in (run / "throughput.json",) if p.is_file()]
    return sorted(p.relative_to(run) for p in files)


def pack(run: Path, records: Path) -> int:
    """Copy ``run``'s records into ``records`` (replacing what was there), without this machine's paths."""
    if not (run / "data" / "train" / "items.jsonl").is_file():
        raise LLM2CLIPError(f"{run} is not a `llm2clip repro --out` folder (no data/train): pass the run's folder")
    if records.exists():
        shutil.rmtree(records)
    files = _record_files(run)
    for rel in files:
        record = json.loads((run / rel).read_text())
        if rel.parts[0] == "stage1":
            record = {k: record.get(k) for k in STAGE1_KEYS}
        (records / rel).parent.mkdir(parents=True, exist_ok=True)
        (records / rel).write_text(json.dumps(portable(record, run), indent=2, sort_keys=True) + "\n")
    data = {s: _digest(run / "data" / s / "items.jsonl") for s in SPLITS if (run / "data" / s / "items.jsonl").is_file()}
    (records / MANIFEST).write_text(json.dumps({"format": FORMAT, "data": data, "files": len(files)}, indent=2) + "\n")
    return len(files)


def unpack(records: Path, run: Path) -> tuple[int, int]:
    """Copy ``records`` into run folder ``run``, keeping what is there. Returns (records copied, records kept)."""
    manifest = records / MANIFEST
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        raise LLM2CLIPError(f"{records} holds no {MANIFEST}: pass a folder written by `pack`") from None
    if meta.get("format") != FORMAT:
        raise LLM2CLIPError(f"{manifest} is not in format {FORMAT}")
    if (run / MANIFEST).is_file() and json.loads((run / MANIFEST).read_text()).get("data") != meta.get("data"):
        raise LLM2CLIPError(f"{run} already holds records of other scenes: unpack into a fresh folder")
    run.mkdir(parents=True, exist_ok=True)
    # a row seed is one unit: where the run already has any of its records, it keeps its own and takes none, so
    # one seed's scores never come from two models
    units: dict[Path, list[Path]] = {}
    for src in sorted(p for p in records.rglob("*.json") if p != manifest):
        rel = src.relative_to(records)
        units.setdefault(rel.parent if len(rel.parts) == 3 and rel.parts[0] != "stage1" else rel, []).append(rel)
    copied = kept = 0
    for rels in units.values():
        if any((run / rel).exists() for rel in rels):
            kept += len(rels)
            continue
        for rel in rels:
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(records / rel, run / rel)
        copied += len(rels)
    shutil.copyfile(manifest, run / MANIFEST)
    for split in SPLITS:
        check_records_data(run, split)
    return copied, kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m research.repro_records", description=__doc__.split("\n\n")[0],
                                 epilog="pack DIR RECORDS, then (elsewhere) unpack RECORDS DIR and `llm2clip repro "
                                        "--out DIR` with the same settings: recorded seeds are not trained again.")
    ap.add_argument("action", choices=("pack", "unpack"))
    ap.add_argument("source", type=Path, help="pack: the run folder; unpack: the records folder")
    ap.add_argument("target", type=Path, help="pack: the records folder (replaced); unpack: the run folder")
    args = ap.parse_args(argv)
    try:
        if args.action == "pack":
            n = pack(args.source, args.target)
            sys.stdout.write(f"packed {n} record files of {args.source} into {args.target}\n")
        else:
            copied, kept = unpack(args.source, args.target)
            sys.stdout.write(f"unpacked {copied} record files into {args.target} ({kept} already there, kept)\n")
    except LLM2CLIPError as e:
        sys.stderr.write(f"repro_records: error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
