"""The reproduction's report: DIR/report.json (no machine paths), DIR/report.md and DIR/report.png."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from research.fact_probe import BOUND_GROUPS, LONG_GROUPS, SHORT_GROUPS
from research.repro_claims import claims_markdown
from research.repro_styles import styles_markdown, tests_markdown
from research.seed_stats import fmt_mean_sd

log = logging.getLogger(__name__)

REPORT_KEYS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")


def write_report(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the report's three files into ``out``; returns the report as written to report.json."""
    report = portable(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    (out / "report.md").write_text(render_markdown(report))
    try:
        plot(report, out / "report.png")
    except ImportError:
        log.warning("matplotlib missing: no report.png")
    return report


def portable(obj: Any, out: Path) -> Any:
    """The report without this machine's paths: under DIR they become ``DIR/...``, elsewhere (the model
    cache) only the folder's name is kept, so the report can be committed and compared across machines."""
    if isinstance(obj, dict):
        return {k: portable(v, out) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, out) for v in obj]
    if isinstance(obj, str) and obj.startswith("/"):
        path = Path(obj)
        try:
            return str(Path("DIR") / path.resolve().relative_to(out.resolve()))
        except ValueError:
            return path.name
    return obj


def render_markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = _retrieval(report)
    lines += styles_markdown(rows)
    lines += tests_markdown(report.get("paired_tests"))
    lines += claims_markdown(report.get("paired_tests"))
    lines += _selection(report.get("selection"))
    lines += _direction(rows)
    lines += _twin_breakdown(rows)
    lines += _text_twins(report)
    lines += _fact_probe(rows)
    lines += _caption_retrieval(report["caption_retrieval"])
    lines += _stage1(rows)
    lines += _throughput(report.get("stage2_throughput"))
    lines += _time(report)
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _seed_evals(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's eval of every seed (a report without seeds: its one eval)."""
    return [s["eval"] for s in row.get("seeds") or [{"eval": row["eval"]}]]


def _retrieval(report: dict[str, Any]) -> list[str]:
    """The title, the command and config, and the main table: every row's retrieval on the test split, mean ± sd
    over the training seeds."""
    lines = ["# LLM2CLIP reproduction on the scene corpus", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    seeds = report["config"].get("seeds", 1)
    lines += [f"Config: `{json.dumps(report['config'], sort_keys=True)}`", "",
              "## Retrieval on the test split", "",
              "Long captions are the main numbers; chance R@1 is 1/test scenes, near-twin chance 0.5 (ties count "
              f"as misses). Mean ± sd over {seeds} training seed(s) (sample sd; none for one seed). llm_cc is "
              "the stage-1 recipe and step count chosen on the val split (next section).", "",
              "| row | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | short t2i R@1 | short i2t R@1 "
              "| twin t2i (long) | twin i2t (long) | twin t2i (short) |",
              "|---|" + "---|" * 11]
    getters = [*((lambda e, k=k: e[k]) for k in REPORT_KEYS), lambda e: e["short"]["t2i_r1"],
               lambda e: e["short"]["i2t_r1"], *(lambda e, c=c, d=d: ((e.get("near_twin") or {}).get(c) or {}).get(d)
                                                 for c, d in (("long", "t2i"), ("long", "i2t"), ("short", "t2i")))]
    for name, r in report["rows"].items():
        evals = _seed_evals(r)
        label = f"{name} (= {r['chosen']})" if r.get("chosen") else name
        lines.append("| " + " | ".join([label, *(fmt_mean_sd([g(e) for e in evals]) for g in getters)]) + " |")
    return lines


def _selection(selection: dict[str, Any] | None) -> list[str]:
    """Each choice of this run, its candidates with their val scores and the split it was made on; then the
    settings the run takes as given."""
    if not selection:
        return []
    lines = ["", "## Choices and the split each was made on", "", f"Protocol: {selection.get('protocol')}."]
    if not selection.get("choices"):
        lines += ["", "No choice was made by this run: `--select` chooses llm_cc's recipe and steps on the val "
                      "split. What the run takes as given, and where each setting comes from, is below."]
    for c in selection.get("choices", []):
        lines += ["", f"**{c['choice']}**: chosen `{c['chosen']}` on the **{c['split']}** split "
                      f"(`{c['dataset']}`). Rule: {c['rule']}.", "",
                  "| candidate | val t2i R@1 (long) | val twin t2i (long) | seeds |", "|---|---|---|---|"]
        for name, s in c["candidates"].items():
            mark = " (chosen)" if name == c["chosen"] else ""
            lines.append(f"| {name}{mark} | {fmt_mean_sd(s['t2i_r1']['per_seed'])} | "
                         f"{fmt_mean_sd(s['twin_t2i']['per_seed'])} | {s['seeds']} |")
        if before := c.get("test_scored_before"):
            lines += ["", f"Test scores of {', '.join(f'`{n}`' for n in before)} existed before this choice: they are "
                          "control rows of this report, scored on test by an earlier part of the run (or carried in "
                          "by `research.repro_records`). The rule reads the val scores above only."]
    fixed = selection.get("fixed") or {}
    if fixed:
        lines += ["", "Not chosen by this run:", "",
                  "| setting | how it was set |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in fixed.items()]
    return lines


def _headline(e: dict[str, Any]) -> dict[str, float | None]:
    """The metrics the paper's claims are about, from one row's eval."""
    tw = (e.get("near_twin") or {}).get("long") or {}
    return {"long t2i R@1": e["t2i_r1"], "long i2t R@1": e["i2t_r1"], "long t2i R@5": e["t2i_r5"],
            "twin t2i (long)": tw.get("t2i"), "twin i2t (long)": tw.get("i2t"),
            "short t2i R@1": e["short"]["t2i_r1"], "short i2t R@1": e["short"]["i2t_r1"]}


def _direction(rows: dict[str, Any]) -> list[str]:
    """llm_cc minus each other row on the metrics the paper's claims are about."""
    if "llm_cc" not in rows:
        return []
    cc = _headline(rows["llm_cc"]["eval"])
    others = [r for r in rows if r != "llm_cc"]
    if not others:
        return []
    lines = ["", "## llm_cc minus each row (positive: LLM2CLIP ahead)", "",
             "| metric | " + " | ".join(f"vs {r}" for r in others) + " |", "|---|" + "---|" * len(others)]
    for metric, v in cc.items():
        cells = []
        for r in others:
            o = _headline(rows[r]["eval"])[metric]
            cells.append("n/a" if v is None or o is None else f"{v - o:+.3f}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return lines


def _twin_breakdown(rows: dict[str, Any]) -> list[str]:
    """Near-twin accuracy (long captions) by where the differing object is first named and by attribute."""
    by = {name: ((r["eval"].get("near_twin") or {}).get("long_by") or {}) for name, r in rows.items()}
    lines: list[str] = []
    for kind, title in (("mention", "where the caption first names the differing object (77-token cut)"),
                        ("attribute", "the attribute that differs")):
        keys = sorted({k for b in by.values() for k in b.get(kind, {})})
        if not keys:
            continue
        lines += ["", f"## Near twins by {title}", "",
                  "t2i / i2t accuracy on long captions (pairs in brackets).", "",
                  "| row | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, b in by.items():
            cells = []
            for k in keys:
                g = b.get(kind, {}).get(k)
                cells.append("n/a" if g is None else f"{_fmt(g['t2i'])} / {_fmt(g['i2t'])} ({g['n_pairs']})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _accuracy_cell(t: dict[str, Any] | None, key: str | None = None) -> str:
    if not t:
        return "n/a"
    g = t if key is None else t.get(key)
    return "n/a" if not g else _fmt(g["accuracy"])


def _text_twins(report: dict[str, Any]) -> list[str]:
    """The text side of the near-twin test alone: can the encoder tell a's caption from its twin's?"""
    lines = ["", "## Near twins, text side only", "",
             "A fresh paraphrase of scene a's long caption must be closer to a's caption than to its twin's "
             "(chance 0.5; no image involved). Raw text encoders, then each row's exported text side "
             "(encoder + adapter, or the 77-token tower).", ""]
    entries = [(f"{n} (raw)", t) for n, t in (report.get("text_twins") or {}).items()]
    entries += [(f"{n} (row's bundle)", r.get("text_twins")) for n, r in report["rows"].items()]
    if not any(t for _, t in entries):
        return []
    attrs = sorted({a for _, t in entries for a in ((t or {}).get("by_attribute") or {})})
    lines += ["| " + " | ".join(["text side", "all", "named early (< 77 tokens)", "named late", *attrs]) + " |",
              "|---|---|---|---|" + "---|" * len(attrs)]
    for name, t in entries:
        by = (t or {}).get("by_attribute") or {}
        cells = [name, _accuracy_cell(t), _accuracy_cell(t, "early"), _accuracy_cell(t, "late"),
                 *(_accuracy_cell(by, a) for a in attrs)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fact_probe(rows: dict[str, Any]) -> list[str]:
    """How much of each kind of scene fact the frozen text embedding (train split, long captions) keeps."""
    probes = {n: r.get("fact_probe") for n, r in rows.items() if r.get("fact_probe")}
    if not probes:
        return []
    groups = SHORT_GROUPS + LONG_GROUPS
    lines = ["", "## Scene facts kept by the frozen text embedding", "",
             "Linear probes on the train split's long-caption embeddings (3/4 fit, 1/4 scored): ROC AUC of yes/no "
             "facts among scenes with the same object count, 0.5 = lost, 1 = kept. The short caption names "
             f"{', '.join(SHORT_GROUPS)}; only the long caption states {', '.join(LONG_GROUPS)}.", "",
             "| text side | named in short | long only | " + " | ".join(groups) + " |",
             "|---|---|---|" + "---|" * len(groups)]
    for name, p in probes.items():
        lines.append(f"| {name} | {_fmt(p.get('named_in_short'))} | {_fmt(p.get('long_only'))} | "
                     + " | ".join(_fmt(p["by_group"].get(g)) for g in groups) + " |")
    return lines + _bound_facts(probes)


def _bound_facts(probes: dict[str, Any]) -> list[str]:
    bound = {n: p for n, p in probes.items() if p.get("bound") is not None}
    if not bound:
        return []
    lines = ["", "Bound facts: which object carries the value (\"the bag is large\"), scored among scenes that "
             "hold the class and the value equally often, so that only the binding varies: a bag of words "
             "scores 0.5. The near twins that differ in cell, size or orientation need these.", "",
             "| text side | bound | " + " | ".join(f"class + {g}" for g in BOUND_GROUPS) + " |",
             "|---|---|" + "---|" * len(BOUND_GROUPS)]
    for name, p in bound.items():
        lines.append(f"| {name} | {_fmt(p['bound'])} | "
                     + " | ".join(_fmt(p["bound_by_group"].get(g)) for g in BOUND_GROUPS) + " |")
    return lines


def _caption_retrieval(accuracy: dict[str, Any]) -> list[str]:
    lines = ["", "## Caption retrieval accuracy (text encoder alone, test split)", "",
             "| text encoder | long->short | short->long | mean |", "|---|---|---|---|"]
    for name, c in accuracy.items():
        lines.append(f"| {name} | {_fmt(c.get('long_to_short'))} | {_fmt(c.get('short_to_long'))} | "
                     f"{_fmt(c.get('caption_retrieval'))} |")
    return lines


def _stage1(rows: dict[str, Any]) -> list[str]:
    """Each stage-1 row (each distinct run once): val caption retrieval, loss and time, mean ± sd over seeds."""
    runs = {}
    for name, r in rows.items():
        if r.get("stage1") and r.get("folder") not in {x.get("folder") for x in runs.values()}:
            runs[name] = r
    if not runs:
        return []
    lines = ["", "## Stage 1", "",
             "Caption retrieval of the text encoder on the val split before and after stage 1; the contrastive "
             "loss at the first and last step.", "",
             "| row | steps | val caption retrieval before | after | first loss | last loss | captions/s | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        s1 = r["stage1"]
        val = [s.get("val") or {} for s in s1]
        cc = [s.get("contrastive") or {} for s in s1]
        cells = [fmt_mean_sd([(v.get("before") or {}).get("caption_retrieval") for v in val]),
                 fmt_mean_sd([(v.get("after") or {}).get("caption_retrieval") for v in val]),
                 fmt_mean_sd([c.get("first_loss") for c in cc]), fmt_mean_sd([c.get("last_loss") for c in cc]),
                 fmt_mean_sd([c.get("samples_s") for c in cc]), fmt_mean_sd([s.get("seconds") for s in s1])]
        label = f"{name} (= {r['chosen']})" if r.get("chosen") else name
        lines.append(f"| {label} | {cc[0].get('steps')} | " + " | ".join(cells) + " |")
    return lines


def _throughput(t: dict[str, float] | None) -> list[str]:
    if not t:
        return []
    return ["", "## Stage-2 throughput", "",
            f"Precomputed caption embeddings: {t['precomputed']} samples/s; LLM run online: {t['online']} "
            f"samples/s ({t['speedup']}x)."]


def _time(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Time", "", "Seconds summed over seeds; a row that shares its runs with another (llm_cc and "
             "the control it equals) counts them again.", "", "| part | seconds |", "|---|---|"]
    for name, r in report["rows"].items():
        s1 = sum(s.get("seconds") or 0 for s in r.get("stage1") or [])
        if s1:
            lines.append(f"| {name}: stage 1 | {round(s1, 1)} |")
        # records from before stage 1 was timed apart count it here too, where the same pass ran it
        with_s1 = " (and stage 1, in seeds recorded before it was timed apart)" if r.get("stage1_in_seconds") else ""
        lines.append(f"| {name}: embeddings, stage 2, export, eval{with_s1} | {r.get('seconds')} |")
    return lines + [f"| this invocation (a rerun reuses every cached step) | {report['seconds']} |", ""]


def _bars(row: dict[str, Any], style: str, key: str) -> tuple[float, float] | None:
    """Mean and sample sd over seeds of one style's R@1 (own: the row's eval when it has no per-seed styles)."""
    values = (row.get("styles") or {}).get(f"{style} {key}")
    if values:
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return float(np.mean(values)), sd
    if style == "own":
        return float(row["eval"][f"{key}_r1"]), 0.0
    return None


def plot(report: dict[str, Any], png: Path) -> None:
    """Long-caption R@1 both ways, own-style and unseen-style (mean and sd over seeds), and near-twin t2i accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["rows"])
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, key in zip(axes[:2], ("t2i", "i2t"), strict=True):
        for style, shift, colour in (("own", -0.2, "#2458d6"), ("unseen", 0.2, "#9ab3ee")):
            bars = [_bars(report["rows"][n], style, key) for n in names]
            if not any(bars):
                continue
            ax.bar(x + shift, [b[0] if b else 0 for b in bars], 0.4, yerr=[b[1] if b else 0 for b in bars],
                   color=colour, capsize=2, label=f"{style}-style captions")
        ax.set_title(f"{key} R@1 (long)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
    twins = [((report["rows"][n]["eval"].get("near_twin") or {}).get("long") or {}).get("t2i", 0) for n in names]
    axes[2].bar(x, twins, color="#d68a24")
    axes[2].axhline(0.5, color="grey", lw=1, ls="--")
    axes[2].set_title("near-twin t2i accuracy (long, own style)")
    axes[2].set_ylim(0, 1)
    for ax in axes:  # up to eleven rows with long names: slanted, so that they do not overlap
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
