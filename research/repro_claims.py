"""The paper's three claims, read off the report's paired tests (research/repro_styles.py).

Each claim is a signed comparison between rows: LLM2CLIP ahead of CLIP's text encoder, an LLM without
caption-contrastive (CC) fine-tuning behind it, and CC as what puts the LLM ahead. CLIP's text encoder has two
stand-ins here: ``clip77`` (a 77-token tower trained from scratch) and ``minilm77`` (a pretrained encoder cut at 77
tokens). A claim is judged on the paper's own ground, long captions in the training grammar, both directions at
R@1; the short and unseen-phrasing metrics are listed beside it. Only a Holm-corrected difference counts.
"""

from __future__ import annotations

from typing import Any

# (claim, [(x, y), ...], sign): the claim says x - y has that sign on long captions
CLAIMS: tuple[tuple[str, tuple[tuple[str, str], ...], int], ...] = (
    ("LLM2CLIP beats CLIP's text encoder on long captions", (("llm_cc", "clip77"), ("llm_cc", "minilm77")), +1),
    ("an LLM without CC fine-tuning is a worse text encoder than CLIP's",
     (("llm_nocc", "clip77"), ("llm_nocc", "minilm77")), -1),
    ("CC fine-tuning is what makes the LLM a good text encoder", (("llm_cc", "llm_nocc"),), +1),
)
MAIN = ("own long t2i R@1", "own long i2t R@1")  # the metrics a claim is judged on


def verdict(by_metric: dict[str, dict[str, Any]], sign: int) -> str:
    """``holds`` when every main metric differs in the claimed direction after Holm, ``reversed`` when every one
    differs the other way; otherwise what is significant of each, or ``not shown``."""
    agree = [m for m in MAIN if by_metric[m]["significant"] and by_metric[m]["difference"] * sign > 0]
    against = [m for m in MAIN if by_metric[m]["significant"] and by_metric[m]["difference"] * sign < 0]
    if len(agree) == len(MAIN):
        return "holds"
    if len(against) == len(MAIN):
        return "reversed"
    if agree or against:
        parts = [f"holds on {_short(m)}" for m in agree] + [f"reversed on {_short(m)}" for m in against]
        return "; ".join(parts)
    return "not shown"


def _short(metric: str) -> str:
    return metric.split()[2]  # "own long t2i R@1" -> "t2i"


def claims(tests: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One record per claim and comparison present in ``tests`` (``compare_models.family``'s output)."""
    if not tests:
        return []
    out = []
    for claim, pairs, sign in CLAIMS:
        for x, y in pairs:
            by_metric = tests["comparisons"].get(f"{x}-{y}")
            if by_metric is None:
                continue
            others = {m: t["difference"] for m, t in by_metric.items() if m not in MAIN and t["significant"]}
            out.append({"claim": claim, "comparison": f"{x} - {y}", "sign": sign,
                        "verdict": verdict(by_metric, sign),
                        "main": {m: by_metric[m]["difference"] for m in MAIN}, "other_significant": others})
    return out


def claims_markdown(tests: dict[str, Any] | None) -> list[str]:
    """The report's section on the paper's claims: a line per claim and comparison."""
    records = claims(tests)
    if not records:
        return []
    lines = ["", "## The paper's claims at this scale (test split)", "",
             "Judged on long captions in the training grammar, t2i and i2t R@1, from the paired tests above "
             f"(Holm over all {tests['family']} tests). clip77 and minilm77 both stand for CLIP's text encoder: one "
             "trained from scratch, one pretrained; both cut at 77 tokens. The last column lists the other metrics "
             "that differ after Holm (short captions, unseen phrasing).", "",
             "| claim | x - y | own long t2i | own long i2t | verdict | other differences after Holm |",
             "|---|---|---|---|---|---|"]
    for r in records:
        others = ", ".join(f"{m} {d:+.3f}" for m, d in r["other_significant"].items()) or "none"
        main = " | ".join(f"{r['main'][m]:+.3f}" for m in MAIN)
        lines.append(f"| {r['claim']} | {r['comparison']} | {main} | **{r['verdict']}** | {others} |")
    return lines
