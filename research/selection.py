"""The validation protocol: every choice among candidates is made on the val split, never on test.

A candidate (a stage-1 recipe, a step count) is trained for every seed; each seed's bundle is scored on the val
corpus through ``training.eval.evaluate`` (the same function that scores the final rows on test), and the
``RULE`` picks one. Only the chosen configurations are then scored on test, once each (research/repro.py).
``score_on_val`` refuses a corpus whose items are not all from the val split, so a wrong path cannot leak
test into a choice. The record of every choice (candidates, their val scores, the split and corpus used) is
written to the run folder as selection.json and rendered in report.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llm2clip.data import read_dataset
from llm2clip.errors import LLM2CLIPError
from research.stats import mean_sd

SELECTION_SPLIT = "val"
VAL_SCORE = "val.json"  # beside a bundle: its scores on the val corpus
RULE = ("highest mean (over seeds) long-caption t2i R@1 on the val split; on a tie, the higher mean near-twin t2i "
        "accuracy (long captions) on val, then fewer stage-1 steps, then the earlier candidate in the list")


class SelectionError(LLM2CLIPError):
    """A choice could not be made as the protocol says (no candidates, a corpus other than val)."""


def score_on_val(bundle: Path, val_dir: Path) -> dict[str, Any]:
    """``evaluate(bundle, val_dir)`` in fp32, cached beside the bundle as val.json; ``val_dir`` must hold the
    val split only."""
    from training.eval import evaluate

    cache = Path(bundle).parent / VAL_SCORE
    if cache.is_file():
        return json.loads(cache.read_text())
    splits = {(it.meta or {}).get("split") for it in read_dataset(val_dir).items}
    if splits != {SELECTION_SPLIT}:
        raise SelectionError(f"{val_dir} holds scenes of the {sorted(map(str, splits))} split(s): choices are "
                             f"made on the {SELECTION_SPLIT} split only; pass the val corpus")
    result = evaluate(bundle, val_dir, precision="fp32", progress=False)
    cache.write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


def val_summary(scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The rule's numbers of one candidate over its seeds: mean, sd and per-seed values."""
    out: dict[str, Any] = {"seeds": len(scores)}
    for name, get in (("t2i_r1", lambda s: s["t2i_r1"]),
                      ("twin_t2i", lambda s: ((s.get("near_twin") or {}).get("long") or {}).get("t2i"))):
        values = [get(s) for s in scores]
        if any(v is None for v in values):
            raise SelectionError("the val corpus has no near twins: generate it with this version's "
                                 "`llm2clip data scenes --split val`")
        mean, sd = mean_sd(values)
        out[name] = {"mean": mean, "sd": sd, "per_seed": values}
    return out


def choose(summaries: dict[str, dict[str, Any]], steps: dict[str, int]) -> str:
    """The candidate ``RULE`` picks among ``summaries`` (name -> ``val_summary``), in their order."""
    if not summaries:
        raise SelectionError("nothing to choose from: give at least one candidate")
    order = list(summaries)

    def key(name: str) -> tuple[float, float, int, int]:
        s = summaries[name]
        return (-s["t2i_r1"]["mean"], -s["twin_t2i"]["mean"], steps.get(name, 0), order.index(name))

    return min(order, key=key)


def select(choice: str, candidates: dict[str, Callable[[int], Path]], seeds: int, val_dir: Path,
           steps: dict[str, int] | None = None) -> dict[str, Any]:
    """Make ``choice`` among ``candidates`` (name -> ``build(seed) -> bundle``, trained or cached by the caller)
    on the val corpus ``val_dir``; returns the choice's record. Nothing else is read: no test path is given."""
    summaries = {}
    for name, build in candidates.items():
        summaries[name] = val_summary([score_on_val(build(k), val_dir) for k in range(seeds)])
    chosen = choose(summaries, steps or {})
    return {"choice": choice, "split": SELECTION_SPLIT, "dataset": str(val_dir), "rule": RULE,
            "candidates": summaries, "chosen": chosen}


def selection_record(choices: list[dict[str, Any]], fixed: dict[str, str]) -> dict[str, Any]:
    """selection.json: the choices made on val, and the settings this run takes as given (not selected)."""
    return {"protocol": f"every choice on the {SELECTION_SPLIT} split; the test split scores each final "
                        "configuration once", "choices": choices, "fixed": fixed}
