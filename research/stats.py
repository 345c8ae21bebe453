"""Statistics a reviewer accepts: mean ± sd over seeds, and paired tests between two models that count
dependent queries once, with Holm's correction across the comparisons of a report.

Why clusters: the test split's near twins are two scenes that differ in one attribute of one object, so
whether a model gets scene a right and whether it gets its twin b right are not independent (one hard
distinction decides both), and the near-twin test scores each pair twice (a against b, b against a) in
each direction. Counting 250 twin pairs scored both ways as 500 independent outcomes makes a p-value too
small. Here every query of one twin pair (both members' captions and images, every direction) is one
cluster; three mutual twins (an odd test split) are one cluster of three scenes.

The test (``paired_cluster_test``): per model, a query's hits are averaged over that model's seeds, then
within each cluster; d_c is model a's cluster mean minus model b's. Under "no difference" each d_c is as
likely positive as negative, so the null distribution of mean(d_c) comes from flipping signs: exact
enumeration when at most ``EXACT_MAX`` clusters differ (clusters with d_c = 0 leave every flipped sum
unchanged, so leaving them out gives the same p), Monte Carlo with the +1 correction otherwise
(p = (1 + as extreme) / (1 + n_perm), never 0). Two-sided. The 95% interval is a percentile bootstrap
that resamples clusters. Pure numpy.

What the p-value is about: the trained models are taken as given and the scenes are the sample. The
spread from seed to seed is what mean ± sd shows; with three seeds a test cannot say more about it.
Outcomes of eval runs come from ``research.outcomes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llm2clip.errors import LLM2CLIPError

EXACT_MAX = 20  # 2**20 sign patterns: ~8 MB of sums, well under a second
ALPHA = 0.05
_CHUNK = 2048  # permutations or resamples per matrix product: bounded memory at any n_perm


class StatsError(LLM2CLIPError):
    """Statistics asked of data that cannot give them (no values, mismatched queries, bad hits)."""


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1) of per-seed values; sd is None for a single value,
    which has no spread to show."""
    x = np.asarray(list(values), dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise StatsError("mean ± sd needs at least one value (one per seed)")
    if not np.isfinite(x).all():
        raise StatsError(f"mean ± sd of non-finite values {x.tolist()}: a seed's metric is missing")
    return float(x.mean()), (float(x.std(ddof=1)) if len(x) > 1 else None)


def fmt_mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """``0.468 ± 0.012`` (sd with ddof=1), or ``0.468`` for one seed. n is not in the cell: a table says it
    once, in ``seeds_note``."""
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def seeds_note(seeds: Mapping[str, int]) -> str:
    """The footnote that says what n is behind a table of ``fmt_mean_sd`` cells: one count when every row
    has the same number of seeds, else each row's."""
    if not seeds:
        raise StatsError("no rows to describe")
    counts = set(seeds.values())
    if counts == {1}:
        return "n=1 seed per row: no sd."
    head = "mean ± sd (sample sd, n−1) over "
    if len(counts) == 1:
        return head + f"n={counts.pop()} seeds per row."
    rows = ", ".join(f"{name} {n}" for name, n in seeds.items())
    return head + f"each row's seeds: {rows}; a row with one seed shows no sd."


@dataclass(frozen=True)
class Outcomes:
    """One model's outcomes on one metric: ``hits`` (seeds, queries) of 0/1 (a 1-D array is one seed) and
    ``clusters`` (queries,), the id of the group of dependent queries each belongs to (its twin pair)."""

    hits: np.ndarray
    clusters: np.ndarray

    def __post_init__(self) -> None:
        hits = np.asarray(self.hits, dtype=float)
        hits = hits[None, :] if hits.ndim == 1 else hits
        clusters = np.asarray(self.clusters)
        if hits.ndim != 2 or hits.shape[0] == 0 or hits.shape[1] == 0:
            raise StatsError(f"hits must be (seeds, queries) with at least one of each, not {hits.shape}")
        if clusters.shape != (hits.shape[1],):
            raise StatsError(f"{hits.shape[1]} queries but {clusters.shape} cluster ids: one id per query")
        if not np.isfinite(hits).all() or hits.min() < 0 or hits.max() > 1:
            raise StatsError("hits must be 0/1 (or shares in [0, 1]); found values outside")
        object.__setattr__(self, "hits", hits)
        object.__setattr__(self, "clusters", clusters)

    @property
    def seeds(self) -> int:
        return int(self.hits.shape[0])


def cluster_means(hits: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted cluster ids, each cluster's mean of the seed-averaged hits): a cluster counts once however
    many queries it holds."""
    o = Outcomes(hits, clusters)
    ids, inverse = np.unique(o.clusters, return_inverse=True)
    per_query = o.hits.mean(axis=0)
    return ids, np.bincount(inverse, per_query) / np.bincount(inverse)


@dataclass(frozen=True)
class PairedTest:
    """Model a against model b on the same queries (see ``paired_cluster_test``)."""

    difference: float  # mean over clusters of d_c = a's cluster mean - b's: positive, a ahead
    ci95: tuple[float, float]  # percentile bootstrap over clusters
    p: float  # two-sided sign-flip permutation p over clusters
    n_clusters: int
    discordant: int  # clusters with d_c != 0: the only ones the test can learn from
    a_ahead: int
    b_ahead: int
    mean_a: float  # the mean of a's cluster means (the plain accuracy when clusters are equal in size)
    mean_b: float
    seeds: tuple[int, int]
    method: str  # "exact" (every sign pattern) or "monte-carlo (N)"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"], d["seeds"] = list(self.ci95), list(self.seeds)
        return d


def paired_cluster_test(hits_a: np.ndarray, hits_b: np.ndarray, clusters: np.ndarray, n_perm: int = 10_000,
                        seed: int = 0, n_boot: int = 10_000) -> PairedTest:
    """Is model a's hit rate different from model b's on the same queries? ``hits_a`` (seeds_a, queries)
    and ``hits_b`` (seeds_b, queries) may have different seed counts; ``clusters`` (queries,) groups the
    dependent queries. Deterministic for a given ``seed``."""
    a, b = Outcomes(hits_a, clusters), Outcomes(hits_b, clusters)
    if a.hits.shape[1] != b.hits.shape[1]:
        raise StatsError(f"a has {a.hits.shape[1]} queries and b {b.hits.shape[1]}: pair them on the same "
                         "queries")
    if n_perm < 1 or n_boot < 1:
        raise StatsError("n_perm and n_boot must be at least 1")
    _, ma = cluster_means(a.hits, a.clusters)
    _, mb = cluster_means(b.hits, b.clusters)
    d = ma - mb
    tol = 1e-9 * (1.0 + np.abs(d).sum())
    d[np.abs(d) <= tol] = 0.0  # float noise from seed averaging is no difference
    rng_perm, rng_boot = np.random.default_rng(seed).spawn(2)
    p, method = sign_flip_p(d, n_perm, rng_perm)
    return PairedTest(difference=float(d.mean()), ci95=bootstrap_ci(d, n_boot, rng_boot), p=p,
                      n_clusters=len(d), discordant=int((d != 0).sum()), a_ahead=int((d > 0).sum()),
                      b_ahead=int((d < 0).sum()), mean_a=float(ma.mean()), mean_b=float(mb.mean()),
                      seeds=(a.seeds, b.seeds), method=method)


def sign_flip_p(d: np.ndarray, n_perm: int, rng: np.random.Generator) -> tuple[float, str]:
    """Two-sided p of mean(d) = 0 against its sign-flip distribution, and how it was computed."""
    nz = d[d != 0]
    if len(nz) == 0:
        return 1.0, "exact"
    observed = abs(nz.sum())
    tol = 1e-9 * (1.0 + np.abs(nz).sum())
    if len(nz) <= EXACT_MAX:
        sums = np.zeros(1)
        for x in nz:
            sums = np.concatenate([sums + x, sums - x])
        return float((np.abs(sums) >= observed - tol).mean()), "exact"
    extreme = 0
    for start in range(0, n_perm, _CHUNK):
        signs = rng.integers(0, 2, size=(min(_CHUNK, n_perm - start), len(nz)), dtype=np.int8) * 2 - 1
        extreme += int((np.abs(signs @ nz) >= observed - tol).sum())
    return (1 + extreme) / (1 + n_perm), f"monte-carlo ({n_perm})"


def bootstrap_ci(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile interval of mean(d) when the clusters are resampled with replacement."""
    means = []
    for start in range(0, n_boot, _CHUNK):
        idx = rng.integers(0, len(d), size=(min(_CHUNK, n_boot - start), len(d)))
        means.append(d[idx].mean(axis=1))
    lo, hi = np.quantile(np.concatenate(means), [0.025, 0.975])
    return float(lo), float(hi)


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values, in the input's order: the i-th smallest of m is multiplied by
    m - i + 1, then made monotone (never below a smaller p's adjusted value) and capped at 1. Rejecting
    where the adjusted p < alpha keeps the chance of any false "difference" in the family under alpha."""
    names = list(pvalues)
    p = np.array([pvalues[n] for n in names], dtype=float)
    if len(p) and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise StatsError(f"p-values must lie in [0, 1]: {dict(pvalues)}")
    order = np.argsort(p, kind="stable")
    m = len(p)
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    adjusted = np.empty(m)
    adjusted[order] = scaled
    return {n: float(a) for n, a in zip(names, adjusted, strict=True)}


def compare_rows(rows: Mapping[str, Mapping[str, Outcomes]], reference: str = "llm_cc",
                 metrics: Sequence[str] | None = None, alpha: float = ALPHA, n_perm: int = 10_000,
                 seed: int = 0) -> dict[str, Any]:
    """``reference`` against every other row on every metric (``rows[row][metric]``; default: the
    reference's metrics), as one family: Holm across all of its comparisons, and ``significant`` only
    where the adjusted p < ``alpha``. JSON types; ``comparisons[metric][row]`` is ``PairedTest.as_dict()``
    (a = the reference) plus ``p_holm`` and ``significant``."""
    if reference not in rows:
        raise StatsError(f"reference row {reference!r} is not among the rows {sorted(rows)}")
    metrics = list(rows[reference]) if metrics is None else list(metrics)
    others = [r for r in rows if r != reference]
    if not others or not metrics:
        raise StatsError("nothing to compare: give the reference, at least one other row and one metric")
    tests: dict[tuple[str, str], PairedTest] = {}
    for metric in metrics:
        ref = _metric(rows, reference, metric)
        for other in others:
            o = _metric(rows, other, metric)
            if not np.array_equal(ref.clusters, o.clusters):
                raise StatsError(f"{other}'s {metric} was scored on other queries than {reference}'s: "
                                 "evaluate every row on the same test split")
            tests[metric, other] = paired_cluster_test(ref.hits, o.hits, ref.clusters, n_perm, seed)
    adjusted = holm({f"{m}\t{o}": t.p for (m, o), t in tests.items()})
    comparisons: dict[str, dict[str, Any]] = {m: {} for m in metrics}
    for (metric, other), t in tests.items():
        p_holm = adjusted[f"{metric}\t{other}"]
        comparisons[metric][other] = {**t.as_dict(), "p_holm": p_holm, "significant": bool(p_holm < alpha)}
    return {"reference": reference, "alpha": alpha, "correction": "holm", "family": len(tests),
            "test": "paired sign-flip permutation over twin-pair clusters (hits averaged over seeds, then "
                    "within cluster); 95% cluster-bootstrap interval",
            "comparisons": comparisons}


def _metric(rows: Mapping[str, Mapping[str, Outcomes]], row: str, metric: str) -> Outcomes:
    if metric not in rows[row]:
        raise StatsError(f"row {row!r} has no {metric!r} outcomes (it has {sorted(rows[row])})")
    return rows[row][metric]


def fmt_comparison(entry: Mapping[str, Any], digits: int = 3) -> str:
    """A table cell for one ``compare_rows`` comparison: ``+0.328 [+0.281, +0.374] p=0.00012*``, p
    Holm-adjusted, ``*`` where it survives the correction."""
    lo, hi = entry["ci95"]
    star = "*" if entry["significant"] else ""
    return (f"{entry['difference']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] "
            f"p={_fmt_p(entry['p_holm'])}{star}")


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"
