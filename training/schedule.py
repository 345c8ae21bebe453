"""The learning-rate schedule both training stages use."""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at ``step``: linear warmup over ``warmup`` steps, then cosine to 0
    at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
