"""Training curves of a stage-2 run as one PNG: loss, temperature, learning rate and, when a validation set
was given, retrieval recall per epoch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VAL_KEYS = ("val_t2i_r1", "val_t2i_r5", "val_i2t_r1", "val_i2t_r5")


def save_curves(history: Sequence[dict[str, Any]], out_png: str | Path) -> Path:
    """Write the curves of ``history`` (the entries of history.json) to ``out_png``, replacing it whole."""
    # the object API with the Agg canvas: no pyplot global state, no display needed, safe in any thread
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_png = Path(out_png)
    val = [h for h in history if any(k in h for k in VAL_KEYS)]
    panels = 4 if val else 3
    fig = Figure(figsize=(4.2 * panels, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    steps = [h["step"] for h in history]

    def line(ax, key: str, title: str, log: bool = False) -> None:
        pts = [(s, h[key]) for s, h in zip(steps, history, strict=True) if h.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if log and pts and min(p[1] for p in pts) > 0:
            ax.set_yscale("log")

    line(axes[0], "loss", "CLIP loss")
    line(axes[1], "logit_scale", "logit scale (1 / temperature)")
    line(axes[2], "lr", "learning rate (adapter, pool)", log=True)
    if val:
        ax = axes[3]
        for key in VAL_KEYS:
            pts = [(h["step"], h[key]) for h in val if key in h]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, lw=1.2, label=key.removeprefix("val_"))
        ax.set_title("validation recall (long captions)")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    tmp = out_png.with_name(out_png.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, out_png)
    return out_png
