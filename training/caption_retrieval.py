"""Caption retrieval accuracy: the text-side metric of LLM2CLIP (Llama3-8B 5.2% -> 29.5% after CC).

The text encoder alone (bidirectional attention, mean pooling, cosine) embeds every item's long and
short caption. ``long_to_short``: each long caption, as a query, must rank its own item's short caption
first among the short captions of the whole split; ``short_to_long`` the other way round;
``caption_retrieval`` is their mean.

Scene corpora repeat short captions ("two items: a bag and a coat, on a plain red background" fits
many scenes), and identical texts embed identically, so no encoder can tell those items apart. The
text-level accuracy therefore counts a retrieved item as right when it cannot be told from the right
one by the texts involved: its caption on the gallery side equals the target's (long->short: the same
short text) or its caption on the query side equals the query (short->long: an identical short query
fits either long caption equally). ``*_strict`` counts only the item itself. A tie between a right and
a wrong gallery item is a miss, as in ``training.eval``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from llm2clip.data import Dataset, read_dataset
from training.config import MAX_TOKENS

METRICS = ("caption_retrieval", "long_to_short", "short_to_long", "caption_retrieval_strict",
           "long_to_short_strict", "short_to_long_strict")


def embed_texts(text_encoder_dir: str | Path, texts: list[str], max_tokens: int = MAX_TOKENS,
                progress: bool = True, precision: str = "bf16") -> np.ndarray:
    """Unit-norm float32 embeddings (N, dim) of ``texts`` by the text encoder in ``text_encoder_dir``, through
    the project's text encoder interface."""
    from llm2clip.encoders.torch_backend import TorchTextEncoder

    encoder = TorchTextEncoder.from_folder(text_encoder_dir, max_tokens, precision=precision, normalize=True)
    with tqdm(total=len(texts), desc="caption retrieval", unit="cap", disable=not progress) as bar:
        return encoder.encode(texts, progress=lambda n, _tokens: bar.update(n))


def _hits(sim: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per query row: the best right gallery item scores strictly above every wrong one."""
    best_right = np.where(right, sim, -np.inf).max(axis=1)
    best_wrong = np.where(right, -np.inf, sim).max(axis=1)
    return best_right > best_wrong


def retrieval_accuracy(long_emb: np.ndarray, short_emb: np.ndarray, long_texts: list[str],
                       short_texts: list[str]) -> dict[str, float]:
    """Caption retrieval accuracies from unit-norm embeddings, item i = row i of both matrices."""
    sim = long_emb @ short_emb.T  # (long query, short gallery); its transpose is short -> long
    n = len(long_texts)
    same_long = np.asarray(long_texts, dtype=object)[:, None] == np.asarray(long_texts, dtype=object)[None, :]
    same_short = np.asarray(short_texts, dtype=object)[:, None] == np.asarray(short_texts, dtype=object)[None, :]
    # indistinguishable by text: the same target text, or the same query text (symmetric in i, j)
    alike = same_long | same_short
    own = np.eye(n, dtype=bool)
    l2s, s2l = _hits(sim, alike).mean(), _hits(sim.T, alike).mean()
    l2s_strict, s2l_strict = _hits(sim, own).mean(), _hits(sim.T, own).mean()
    return {
        "caption_retrieval": float((l2s + s2l) / 2),
        "long_to_short": float(l2s),
        "short_to_long": float(s2l),
        "caption_retrieval_strict": float((l2s_strict + s2l_strict) / 2),
        "long_to_short_strict": float(l2s_strict),
        "short_to_long_strict": float(s2l_strict),
    }


class MemoEncoder:
    """A text encoder (``encode(texts, progress=None) -> (N, dim)``) that embeds each distinct text once over its
    lifetime: probes that share texts (a split's long captions, in the retrieval metrics and the paraphrase
    near-twin probe) pay for them once, and identical texts get bit-identical vectors whatever their batch.
    ``encoded`` counts the texts the wrapped encoder was actually run on; ``about`` is what a result records of
    the encoder (its folder's fingerprint, cut, precision)."""

    def __init__(self, encoder: Any, about: dict[str, Any] | None = None) -> None:
        self.encoder, self.encoded, self.about = encoder, 0, dict(about or {})
        self._rows: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str], progress: Any = None) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._rows]
        if missing:
            emb = np.asarray(self.encoder.encode(missing, progress=progress), np.float32)
            self._rows.update(zip(missing, emb, strict=True))
            self.encoded += len(missing)
        if progress is not None and len(texts) > len(missing):
            progress(len(texts) - len(missing), 0)
        if not texts:
            return np.asarray(self.encoder.encode([]), np.float32)
        return np.stack([self._rows[t] for t in texts])

    def describe(self) -> dict[str, Any] | None:
        return self.encoder.describe() if hasattr(self.encoder, "describe") else None


def folder_encoder(text_encoder_dir: str | Path, max_tokens: int = MAX_TOKENS, precision: str = "bf16",
                   prefix: Any = None, device: str | None = None) -> MemoEncoder:
    """The text encoder in a Hugging Face folder, unit-norm, as ``caption_retrieval_of`` and
    ``paraphrase_twin_accuracy`` take it, loaded once for both; ``prefix`` shares its first layers' states
    with other models that have the same ones (``llm2clip.encoders.prefix_states``); ``device`` None: CUDA
    when present."""
    from llm2clip.encoders.torch_backend import TorchTextEncoder
    from training.embed import text_encoder_info

    encoder = TorchTextEncoder.from_folder(text_encoder_dir, max_tokens, precision=precision, normalize=True,
                                           device=device)
    if prefix is not None:
        encoder.share_prefix(prefix)
    return MemoEncoder(encoder, {"text_encoder": text_encoder_info(text_encoder_dir), "max_tokens": max_tokens,
                                 "precision": precision})


def caption_retrieval(text_encoder_dir: str | Path, dataset: Dataset | str | Path, max_tokens: int = MAX_TOKENS,
                      progress: bool = True, precision: str = "bf16", prefix: Any = None) -> dict[str, Any]:
    """Caption retrieval accuracy of a text encoder (a Hugging Face folder) on a dataset's long/short captions."""
    return caption_retrieval_of(folder_encoder(text_encoder_dir, max_tokens, precision, prefix), dataset, progress)


def caption_retrieval_of(encoder: MemoEncoder, dataset: Dataset | str | Path, progress: bool = True) -> dict[str, Any]:
    """``caption_retrieval`` with the encoder already loaded (``folder_encoder``); the result carries its
    ``about``."""
    t0 = time.perf_counter()
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    long_texts = [it.long for it in ds.items]
    short_texts = [it.short for it in ds.items]
    with tqdm(total=len(long_texts) + len(short_texts), desc="caption retrieval", unit="cap",
              disable=not progress) as bar:
        emb = encoder.encode(long_texts + short_texts, progress=lambda n, _tokens: bar.update(n))
    long_emb, short_emb = emb[: len(long_texts)], emb[len(long_texts):]
    return {
        **retrieval_accuracy(long_emb, short_emb, long_texts, short_texts),
        "n": len(ds),
        "unique_long": len(set(long_texts)),
        "unique_short": len(set(short_texts)),
        "dataset": str(ds.root),
        **encoder.about,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def paraphrase_twin_texts(dataset: Dataset) -> tuple[list[tuple[int, int]], list[str]]:
    """Near-twin pairs of a test split and, per scene, a generator paraphrase of its long caption."""
    from llm2clip.data import paraphrase_long
    from training.eval import twin_pairs

    pairs = twin_pairs(dataset)
    paraphrases = [paraphrase_long(it.meta, seed=i, avoid=(it.long,)) if isinstance(it.meta, dict)
                   and "objects" in it.meta else "" for i, it in enumerate(dataset.items)]
    return pairs, paraphrases


def paraphrase_twin_accuracy(embed, dataset: Dataset | str | Path) -> dict[str, Any] | None:
    """The text side of the near-twin test, no image involved: for each twin pair (a, b), a fresh paraphrase of
    a's long caption must be strictly closer to a's long caption than to b's. An encoder that keeps the one
    differing attribute above the noise of rephrasing and reordering scores 1; one that cannot see it, 0.5
    or less. ``embed(texts) -> unit-norm (N, dim)`` is any text encoder (an LLM folder, a bundle's ONNX model).
    Also split by where a's own caption first names the differing object (inside or after 77 tokens), and
    by the attribute that differs (``by_attribute``).
    None when the dataset has no near twins (only the ``test`` split has them)."""
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    pairs, paraphrases = paraphrase_twin_texts(ds)
    if not pairs:
        return None
    used = sorted({i for p in pairs for i in p})
    texts = [ds.items[i].long for i in used] + [paraphrases[i] for i in used]
    emb = np.asarray(embed(texts), np.float32)
    row = {i: k for k, i in enumerate(used)}
    long_emb, para_emb = emb[: len(used)], emb[len(used):]
    hit = np.array([float(para_emb[row[a]] @ long_emb[row[a]]) > float(para_emb[row[a]] @ long_emb[row[b]])
                    for a, b in pairs])
    late = np.array([bool((ds.items[a].meta or {}).get("twin_late")) for a, _ in pairs])
    out: dict[str, Any] = {"accuracy": float(hit.mean()), "n_pairs": len(pairs)}
    for name, sel in (("early", ~late), ("late", late)):
        if sel.any():
            out[name] = {"accuracy": float(hit[sel].mean()), "n_pairs": int(sel.sum())}
    attribute = np.array([((ds.items[a].meta or {}).get("twin_diff") or {}).get("attribute") or "" for a, _ in pairs])
    out["by_attribute"] = {str(k): {"accuracy": float(hit[attribute == k].mean()), "n_pairs": int((attribute == k).sum())}
                           for k in sorted(set(attribute) - {""})}
    return out
