"""`llm2clip repro`'s unseen-phrasing scores and its paired tests between rows (issue 14, items 2 and 4).

The test split is restyled once into the evaluation-only grammar (``llm2clip data restyle``: the same scenes and
image bytes, captions that the training generator never writes), DIR/data/test-unseen. Every row and seed is
scored per query on both caption styles against one gallery (``training.eval.query_outcomes``, cached as
``styles.json`` beside its eval.json). From those outcomes the report gets:
- each row's R@1 on own-style and unseen-style long captions and the relative drop (1 - unseen / own), mean ± sd
  over seeds;
- paired tests between rows (``research.compare_models.family``): a row's hits averaged over its seeds against
  another's on the same queries, one cluster per twin group, with Holm's correction over every test of the
  report. A difference is called one only when its Holm p is below 0.05.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from research.compare_models import METRICS, family, hits, metric_name
from research.seed_stats import fmt_mean_sd

UNSEEN_STYLE = "unseen"
STYLES_FILE = "styles.json"  # beside a row's eval.json: per-query outcomes on both styles, and unseen's metrics
# (x, y): x minus y. The paper's claims: LLM2CLIP beats CLIP on long captions (llm_cc - clip77, - minilm77), an LLM
# without caption-contrastive fine-tuning is a worse text encoder than CLIP's (llm_nocc - clip77, - minilm77), and
# CC is what makes the LLM good (llm_cc - llm_nocc); then the BERT-type row and every stage-1 control
PAPER_COMPARISONS = (("llm_cc", "clip77"), ("llm_cc", "minilm77"), ("llm_cc", "minilm"), ("llm_cc", "llm_nocc"),
                     ("llm_nocc", "clip77"), ("llm_nocc", "minilm77"))


def unseen_corpus(out: Path, test_dir: Path, seed: int) -> Path:
    """The test split restyled into the unseen grammar (made once, from the test split's own folder)."""
    from llm2clip.data.restyle import restyle_corpus

    path = out / "data" / f"test-{UNSEEN_STYLE}"
    if not (path / "items.jsonl").is_file():
        restyle_corpus(test_dir, path, seed, UNSEEN_STYLE, progress=False)
    return path


def style_outcomes(scoring: Any, own: Path, unseen: Path) -> dict[str, Any]:
    """One row and seed on both styles (``scoring``: ``research.repro_scoring.RowScoring``): per-query outcomes
    of each and the unseen style's metrics. The images are embedded once (``RowScoring`` keeps them)."""
    out: dict[str, Any] = {}
    for style, corpus in (("own", own), (UNSEEN_STYLE, unseen)):
        result = scoring.evaluate(corpus, per_query=True)
        out[style] = result.pop("per_query")
        if style == UNSEEN_STYLE:
            out["unseen_eval"] = result
    if out["own"]["ids"] != out[UNSEEN_STYLE]["ids"]:
        raise ValueError("the unseen corpus is not the test split's scenes in the same order: delete "
                         "DIR/data/test-unseen and run again")
    return out


def drops(outcomes: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per seed: long-caption R@1 both ways on each style, and the relative drop from own to unseen."""
    out: dict[str, list[float | None]] = {}
    for direction in ("t2i", "i2t"):
        for style in ("own", UNSEEN_STYLE):
            metric = (style, "long", direction, 1)
            out[f"{style} {direction}"] = [float(hits(o[style], metric).mean()) for o in outcomes]
        own, unseen = out[f"own {direction}"], out[f"{UNSEEN_STYLE} {direction}"]
        out[f"drop {direction}"] = [None if not o else 1 - (u or 0.0) / o for o, u in zip(own, unseen, strict=True)]
    out[f"{UNSEEN_STYLE} t2i R@5"] = [float(hits(o[UNSEEN_STYLE], (UNSEEN_STYLE, "long", "t2i", 5)).mean())
                                      for o in outcomes]
    return out


def comparisons(rows: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """The paper's comparisons among ``rows`` (name -> the row's record with ``folder``), then llm_cc against each
    stage-1 control that is not llm_cc itself (the chosen recipe is the same folder)."""
    out = [(x, y) for x, y in PAPER_COMPARISONS if x in rows and y in rows]
    if "llm_cc" in rows:
        out += [("llm_cc", name) for name in rows
                if name.startswith("llm_cc:") and rows[name].get("folder") != rows["llm_cc"].get("folder")]
    return out


def paired_tests(outcomes: dict[str, list[dict[str, Any]]], rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """``compare_models.family`` over ``comparisons(rows)``; ``outcomes[row]``: each seed's ``style_outcomes``."""
    pairs = comparisons(rows)
    if not pairs:
        return None
    arms = {name: {style: [o[style] for o in outcomes[name]] for style in ("own", UNSEEN_STYLE)}
            for name in {n for p in pairs for n in p}}
    return family(arms, pairs)


def styles_markdown(rows: dict[str, Any]) -> list[str]:
    """The report's table of own-style against unseen-style captions, from each row's ``styles``."""
    have = {name: r["styles"] for name, r in rows.items() if r.get("styles")}
    if not have:
        return []
    lines = ["", "## Own-style and unseen-style captions (test split)", "",
             "The same test scenes and images, captioned in the training grammar (own) and in the evaluation-only "
             "grammar the generator never writes (unseen: other sentence orders, synonyms, relative positions). "
             "Long captions; drop = 1 - unseen / own, per seed. Mean ± sd over seeds.", "",
             "| row | t2i own | t2i unseen | t2i drop | i2t own | i2t unseen | i2t drop | unseen t2i R@5 |",
             "|---|" + "---|" * 7]
    keys = ("own t2i", "unseen t2i", "drop t2i", "own i2t", "unseen i2t", "drop i2t", "unseen t2i R@5")
    for name, s in have.items():
        lines.append(f"| {name} | " + " | ".join(fmt_mean_sd(s[k]) for k in keys) + " |")
    return lines


def tests_markdown(tests: dict[str, Any] | None) -> list[str]:
    """The report's paired tests: every comparison and metric, its difference, interval, p and Holm p."""
    if not tests:
        return []
    lines = ["", "## Paired tests between rows (test split)", "",
             f"x - y on the same queries, each row's hits averaged over its seeds; one cluster per twin group; "
             f"sign-flip permutation p; Holm over all {tests['family']} tests. **bold**: Holm p < {tests['alpha']}, "
             "the only differences this report calls differences.", "",
             "| x - y | " + " | ".join(metric_name(m) for m in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for comp, by_metric in tests["comparisons"].items():
        cells = []
        for m in METRICS:
            t = by_metric[metric_name(m)]
            cell = f"{t['difference']:+.3f} (p {_p(t['p_holm'])})"
            cells.append(f"**{cell}**" if t["significant"] else cell)
        lines.append(f"| {comp} | " + " | ".join(cells) + " |")
    return lines


def _p(p: float) -> str:
    return "<0.001" if p < 1e-3 else f"{p:.3f}"
