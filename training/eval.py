"""Retrieval evaluation of a model bundle on a dataset: R@1/5/10 both ways, long and short captions,
near twins.

It embeds with the bundle's encoders in the precision the service would serve (or the one asked for), so it
measures exactly what the service serves. The gallery is
the dataset itself: query caption i's right image is image i, image i's right caption is caption i.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from llm2clip.data.dataset import Dataset, read_dataset
from llm2clip.errors import DatasetError

KS = (1, 5, 10)


def ranks(sim: np.ndarray) -> np.ndarray:
    """0-based rank of the right answer (the diagonal) in each row of a (queries, gallery) score matrix.

    A wrong item scoring exactly as high as the right one counts against it: a collapsed model that embeds
    everything alike then scores 0, not 1.
    """
    sim = np.asarray(sim)
    right = np.diagonal(sim)[:, None]
    above = (sim > right).sum(axis=1)
    ties = (sim == right).sum(axis=1) - 1  # the right item ties with itself
    return above + ties


def recall_at(sim: np.ndarray, ks: Sequence[int] = KS) -> dict[int, float]:
    r = ranks(sim)
    return {k: float((r < k).mean()) for k in ks}


def retrieval_metrics(text_emb: np.ndarray, image_emb: np.ndarray,
                      ks: Sequence[int] = KS) -> dict[str, float]:
    """{t2i_r1, ..., i2t_r10} for paired unit embeddings (row i of each describes item i)."""
    sim = text_emb @ image_emb.T  # (captions, images); exact, no index approximation
    t2i = recall_at(sim, ks)
    i2t = recall_at(sim.T, ks)
    return {**{f"t2i_r{k}": t2i[k] for k in ks}, **{f"i2t_r{k}": i2t[k] for k in ks}}


def twin_pairs(dataset: Dataset) -> list[tuple[int, int]]:
    """Ordered (scene, twin) index pairs from ``meta["twin_of"]``; ids not in the dataset are ignored."""
    index = {item.id: i for i, item in enumerate(dataset.items)}
    pairs: set[tuple[int, int]] = set()
    for i, item in enumerate(dataset.items):
        twins = item.meta.get("twin_of") if isinstance(item.meta, dict) else None
        if isinstance(twins, str):
            twins = [twins]
        for twin in twins or []:
            j = index.get(twin)
            if j is not None and j != i:
                pairs.add((i, j))
    return sorted(pairs)


def sign_test_tail(n: int, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): the exact tail of a sign test on n discordant paired outcomes
    (McNemar's exact test). 1 when there is nothing to test."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n if n else 1.0


def twin_hits(text_emb: np.ndarray, image_emb: np.ndarray,
              pairs: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Per pair (a, b), t2i: scene a's caption scores image a above its twin b's image; i2t: image a scores
    caption a above caption b. Strictly above: a tie is a failure to tell the twins apart."""
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    own = np.einsum("nd,nd->n", text_emb[a], image_emb[a])
    return {"t2i": own > np.einsum("nd,nd->n", text_emb[a], image_emb[b]),
            "i2t": own > np.einsum("nd,nd->n", image_emb[a], text_emb[b])}


def twin_accuracy(text_emb: np.ndarray, image_emb: np.ndarray,
                  pairs: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Share of pairs ``twin_hits`` gets right, each way."""
    return {k: float(v.mean()) for k, v in twin_hits(text_emb, image_emb, pairs).items()}


def twin_breakdown(text_emb: np.ndarray, image_emb: np.ndarray, dataset: Dataset,
                   pairs: Sequence[tuple[int, int]]) -> dict[str, dict[str, dict[str, float]]]:
    """Near-twin accuracy split by where scene a's caption first names the differing object (``early``:
    inside the first 77 tokens, ``late``: after them; from ``meta["twin_late"]``) and by the attribute
    that differs (``meta["twin_diff"]["attribute"]``). Pairs whose scene lacks that metadata are left out."""
    groups: dict[str, dict[str, list[tuple[int, int]]]] = {"mention": {}, "attribute": {}}
    for pair in pairs:
        meta = dataset.items[pair[0]].meta if isinstance(dataset.items[pair[0]].meta, dict) else {}
        if isinstance(meta.get("twin_late"), bool):
            groups["mention"].setdefault("late" if meta["twin_late"] else "early", []).append(pair)
        diff = meta.get("twin_diff")
        if isinstance(diff, dict) and isinstance(diff.get("attribute"), str):
            groups["attribute"].setdefault(diff["attribute"], []).append(pair)
    return {kind: {key: {**twin_accuracy(text_emb, image_emb, sub), "n_pairs": len(sub)}
                   for key, sub in sorted(by.items())}
            for kind, by in groups.items()}


def _open_image(dataset: Dataset, item) -> Image.Image:
    path = dataset.image_path(item)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        problem = "is missing"
    except UnidentifiedImageError:
        problem = "is not an image"
    except (OSError, SyntaxError, ValueError) as exc:
        problem = f"cannot be decoded ({exc})"
    # skipping would shrink the gallery and make numbers incomparable across runs: refuse instead
    raise DatasetError(f"item {item.id!r}: image {item.image} {problem}; an eval set must be complete, "
                       "so fix the file or remove the item")


def embed_images(encoder, dataset: Dataset, batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """Unit embeddings of every image of ``dataset``, in order; a missing or broken image is an error."""
    out = []
    items = dataset.items
    bar = tqdm(total=len(items), unit="image", desc="eval images", disable=not progress, file=sys.stderr)
    with bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            out.append(np.asarray(encoder.encode([_open_image(dataset, it) for it in chunk]), np.float32))
            bar.update(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)


def embed_texts(encoder, texts: list[str], progress: bool = True, desc: str = "eval captions") -> np.ndarray:
    """Unit embeddings of ``texts`` in order, in the encoder's token-budget batches."""
    with tqdm(total=len(texts), unit="caption", desc=desc, disable=not progress, file=sys.stderr) as bar:
        return np.asarray(encoder.encode(texts, progress=lambda n, _tokens: bar.update(n)), np.float32)


def evaluate(bundle_path: str | Path, dataset_path: str | Path, batch_size: int = 32, progress: bool = True, *,
             threads: int | None = None, precision: str = "auto") -> dict[str, Any]:
    """Retrieval metrics of a model bundle on a dataset (see the module docstring).

    The text encoder is the bundle's variant in ``precision`` (``auto``: the one the service would choose
    on this machine).
    """
    return _evaluate_bundle(bundle_path, dataset_path, _Opts(batch_size, progress), precision, threads)


def evaluate_encoders(encoders: tuple[Any, Any], dataset_path: str | Path, batch_size: int = 32,
                      progress: bool = True, *, per_query: bool = False) -> dict[str, Any]:
    """``evaluate`` with any (image encoder, text encoder) in place of a bundle's (tests, other runtimes);
    ``model`` is then None. ``per_query``: add the per-query outcomes, as ``evaluate_per_query`` does."""
    t0 = time.perf_counter()
    dataset = read_dataset(dataset_path)
    return _measure(encoders, dataset, str(dataset_path), _Opts(batch_size, progress, per_query), t0)


def evaluate_per_query(bundle_path: str | Path, dataset_path: str | Path, *, precision: str = "auto",
                       threads: int | None = None, batch_size: int = 32,
                       progress: bool = True) -> dict[str, Any]:
    """``evaluate``'s result plus ``per_query`` (see ``query_outcomes``): what paired tests across models and
    seeds need, at no extra embedding cost. A function of its own: ``evaluate``'s output stays as it was."""
    return _evaluate_bundle(bundle_path, dataset_path, _Opts(batch_size, progress, True), precision, threads)


@dataclass(frozen=True)
class _Opts:
    batch_size: int = 32
    progress: bool = True
    per_query: bool = False  # add ``per_query`` to the result


def _evaluate_bundle(bundle_path: str | Path, dataset_path: str | Path, opts: _Opts, precision: str,
                     threads: int | None) -> dict[str, Any]:
    from llm2clip.bundle import load_bundle
    from llm2clip.encoders import load_encoders

    t0 = time.perf_counter()
    dataset = read_dataset(dataset_path)
    bundle = load_bundle(bundle_path)
    encoders = load_encoders(bundle, precision, threads=threads)
    result = _measure(encoders, dataset, str(dataset_path), opts, t0)
    result["model"] = bundle.fingerprint
    return result


def _measure(encoders: tuple[Any, Any], dataset: Dataset, name: str, opts: _Opts,
             t0: float) -> dict[str, Any]:
    img_enc, txt_enc = encoders
    progress = opts.progress
    t1 = time.perf_counter()
    image_emb = embed_images(img_enc, dataset, opts.batch_size, progress)
    t2 = time.perf_counter()
    long_emb = embed_texts(txt_enc, [it.long for it in dataset.items], progress, "eval long captions")
    short_emb = embed_texts(txt_enc, [it.short for it in dataset.items], progress, "eval short captions")
    t3 = time.perf_counter()
    long = retrieval_metrics(long_emb, image_emb)
    short = retrieval_metrics(short_emb, image_emb)
    near_twin = _near_twin(long_emb, short_emb, image_emb, dataset)
    queries = query_outcomes(long_emb, short_emb, image_emb, dataset) if opts.per_query else None
    t4 = time.perf_counter()
    return {
        **long,  # the main numbers: long captions
        "n": len(dataset),
        "long": long,
        "short": short,
        "near_twin": near_twin,
        "model": None,  # the caller's: a bundle's fingerprint
        "text_encoder": txt_enc.describe() if hasattr(txt_enc, "describe") else None,
        "dataset": name,
        "timing": {
            "load_s": round(t1 - t0, 3),
            "encode_images_s": round(t2 - t1, 3),
            "encode_texts_s": round(t3 - t2, 3),
            "metrics_s": round(t4 - t3, 3),
            "total_s": round(t4 - t0, 3),
        },
        **({"per_query": queries} if queries is not None else {}),
    }


def query_outcomes(long_emb: np.ndarray, short_emb: np.ndarray, image_emb: np.ndarray,
                   dataset: Dataset) -> dict[str, Any]:
    """Each query's outcome, in JSON types, for paired tests across models and seeds (``research.stats``):
    ``ids`` (query i is item i: its captions and its image), ``ranks[caption][direction]`` (0-based rank of
    the right answer, as ``ranks``), ``twin_pairs`` (``twin_pairs``: who is whose twin, so that a test can
    cluster dependent queries) and ``twin_hits[caption][direction]`` (``twin_hits`` as 0/1, one per ordered
    pair; None without twins)."""
    pairs = twin_pairs(dataset)
    out: dict[str, Any] = {"ids": [it.id for it in dataset.items], "ranks": {},
                           "twin_pairs": [list(p) for p in pairs], "twin_hits": {} if pairs else None}
    for caption, text in (("long", long_emb), ("short", short_emb)):
        sim = text @ image_emb.T
        out["ranks"][caption] = {"t2i": ranks(sim).tolist(), "i2t": ranks(sim.T).tolist()}
        if pairs:
            hits = twin_hits(text, image_emb, pairs)
            out["twin_hits"][caption] = {k: v.astype(int).tolist() for k, v in hits.items()}
    return out


def _near_twin(long_emb: np.ndarray, short_emb: np.ndarray, image_emb: np.ndarray,
               dataset: Dataset) -> dict[str, Any] | None:
    pairs = twin_pairs(dataset)
    if not pairs:
        return None
    return {
        "n_pairs": len(pairs),
        "long": twin_accuracy(long_emb, image_emb, pairs),
        "short": twin_accuracy(short_emb, image_emb, pairs),
        # the paper's claim in one split: a 77-token encoder can only fail on the late ones
        "long_by": twin_breakdown(long_emb, image_emb, dataset, pairs),
    }


__all__ = ["embed_images", "embed_texts", "evaluate", "evaluate_encoders", "evaluate_per_query", "query_outcomes", "ranks", "recall_at", "retrieval_metrics", "twin_accuracy", "twin_breakdown", "twin_pairs"]
