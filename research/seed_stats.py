"""Over training seeds: the report's mean ± sd cells, and the mean of nested metric records.

The statistics proper (mean ± sd, clustered paired tests, Holm) are in ``research.stats``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from research import stats


def fmt_mean_sd(values: Sequence[float | None]) -> str:
    """``0.468 ± 0.012`` over seeds, ``0.468`` for one seed (``research.stats.fmt_mean_sd``), ``-`` when a
    seed lacks the number."""
    if not values or any(v is None for v in values):
        return "-"
    return stats.fmt_mean_sd([float(v) for v in values if v is not None])


def average(records: Sequence[Any]) -> Any:
    """The mean of records of the same shape: numbers (not bools) averaged leaf by leaf, lists position by
    position, anything else kept when every seed agrees and listed per seed when they differ."""
    first = records[0]
    if isinstance(first, dict) and all(isinstance(r, dict) for r in records):
        keys = [k for k in first if all(k in r for r in records)]
        return {k: average([r[k] for r in records]) for k in keys}
    if all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in records):
        mean = math.fsum(records) / len(records)
        return first if all(r == first for r in records) else mean
    if isinstance(first, list) and all(isinstance(r, list) and len(r) == len(first) for r in records):
        return [average([r[i] for r in records]) for i in range(len(first))]
    return first if all(r == first for r in records) else list(records)
