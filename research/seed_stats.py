"""Mean and sample standard deviation over training seeds, of numbers and of nested metric records.

A local minimum for the report's tables; research/stats.py (issue 14) holds the statistics proper."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample sd (n - 1); sd is None for a single value (one seed says nothing about the spread)."""
    if not values:
        raise ValueError("mean_sd of no values")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def fmt_mean_sd(values: Sequence[float | None]) -> str:
    """``0.468 ± 0.012`` over seeds, ``0.468`` for one seed, ``-`` when a seed lacks the number."""
    if not values or any(v is None for v in values):
        return "-"
    mean, sd = mean_sd([float(v) for v in values if v is not None])
    return f"{mean:.3f}" if sd is None else f"{mean:.3f} ± {sd:.3f}"


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
