"""How `llm2clip repro` scores a row on the test split, with every text embedded once.

A row with a frozen text encoder (minilm77, minilm, llm_nocc, llm_cc and its controls) trained stage 2 on that
encoder's bf16 caption embeddings (``training.embed``). Its text side is scored the same way: the encoder's bf16
vectors of the split's captions, through the row's adapter from its checkpoint (fp32), which is also what the
service's bf16 variant runs (``training.variants``) and what ``auto`` picks on a CPU with bf16. One pass of the
encoder over the split's long, short and paraphrased captions then serves the row's retrieval scores, its twin
probe through the adapter, and the raw encoder's caption retrieval and twin probe (``RawEncoders``); a frozen
encoder without stage 1 serves every seed of its row from that one pass. The exported fp32 ONNX graph is the
reference this path was checked against on the val split, query by query (bench/bench_repro_scoring.py,
bench/RESULTS.md 14). clip77, whose text tower trained with the images, is scored through its bundle's fp32 ONNX
graph (``BundleScoring``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from llm2clip.data import Dataset
from training.caption_retrieval import MemoEncoder, paraphrase_twin_accuracy
from training.eval import evaluate_encoders

# what eval.json records of how it was scored; a cached score made another way is scored again
FROZEN_SCORING = "the frozen encoder's bf16 vectors through the row's fp32 adapter"
BUNDLE_SCORING = "the bundle's fp32 ONNX encoders"


class _Folder:
    """A text encoder folder's model, loaded on first use and released by ``RawEncoders`` when another loads."""

    def __init__(self, folder: Path, max_tokens: int, prefix: Any = None) -> None:
        self.folder, self.max_tokens, self.prefix, self.model = folder, max_tokens, prefix, None

    def encode(self, texts: list[str], progress: Any = None) -> np.ndarray:
        if self.model is None:
            from llm2clip.encoders.torch_backend import TorchTextEncoder

            # unnormalised, as stage 2's caption embeddings are (training.embed)
            self.model = TorchTextEncoder.from_folder(self.folder, self.max_tokens, precision="bf16",
                                                      normalize=False)
            if self.prefix is not None:
                self.model.share_prefix(self.prefix)
        return self.model.encode(texts, progress=progress)


class RawEncoders:
    """Every frozen text encoder a run scores with: its vectors kept per (folder, cut) for the whole run, one model
    in memory at a time; with ``prefix`` (``llm2clip.encoders.prefix_states.PrefixStates``), models that share
    their first layers compute them once per text."""

    def __init__(self, prefix: Any = None) -> None:
        self._memos: dict[tuple[str, int], MemoEncoder] = {}
        self.prefix = prefix

    def get(self, folder: Path, max_tokens: int) -> MemoEncoder:
        from training.embed import text_encoder_info

        key = (str(Path(folder).resolve()), max_tokens)
        for other, memo in self._memos.items():
            if other != key:
                memo.encoder.model = None
        if key not in self._memos:
            self._memos[key] = MemoEncoder(_Folder(Path(folder), max_tokens, self.prefix), {
                "text_encoder": text_encoder_info(folder), "max_tokens": max_tokens, "precision": "bf16"})
        return self._memos[key]


class UnitView:
    """A raw encoder's vectors at unit length, as the raw probes (caption retrieval, twins) compare them."""

    def __init__(self, memo: MemoEncoder) -> None:
        self.memo, self.about = memo, memo.about

    def encode(self, texts: list[str], progress: Any = None) -> np.ndarray:
        emb = self.memo.encode(texts, progress)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


class ThroughAdapter:
    """A row's text side from its frozen encoder's vectors: ``model.encode_text_embedding`` (the adapter, then
    unit length) on each caption's raw embedding."""

    def __init__(self, memo: MemoEncoder, model: Any) -> None:
        self.memo, self.model = memo, model.eval()

    @classmethod
    def from_checkpoint(cls, memo: MemoEncoder, ckpt: Path) -> ThroughAdapter:
        from training.checkpoint import load_checkpoint

        return cls(memo, load_checkpoint(ckpt)[0])

    def encode(self, texts: list[str], progress: Any = None) -> np.ndarray:
        import torch

        raw = torch.from_numpy(np.asarray(self.memo.encode(texts, progress), np.float32))
        with torch.inference_mode():
            return self.model.encode_text_embedding(raw).numpy()

    def describe(self) -> dict[str, Any]:
        return {"backend": "torch", "scoring": FROZEN_SCORING, **self.memo.about}


class MemoImages:
    """An image encoder that embeds each distinct image once (keyed by its decoded pixels): a row's scores on the
    test split's own-style and unseen-style captions share one gallery (research/repro_styles.py)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder, self.dim, self._memo = encoder, encoder.dim, {}

    @staticmethod
    def _key(image: Any) -> tuple[str, tuple[int, int], str]:
        return hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest(), image.size, image.mode

    def encode(self, images: list[Any]) -> np.ndarray:
        keys = [self._key(im) for im in images]
        todo = {k: im for k, im in zip(keys, images, strict=True) if k not in self._memo}
        if todo:
            for k, vec in zip(todo, np.asarray(self.encoder.encode(list(todo.values())), np.float32), strict=True):
                self._memo[k] = vec
        return np.stack([self._memo[k] for k in keys])


class RowScoring:
    """One row's test scores and twin probe from one text encoder (``ThroughAdapter`` or the bundle's fp32 ONNX
    text encoder) and the bundle's fp32 ONNX image encoder, each loaded on first use."""

    def __init__(self, bundle: Path, text: Any = None) -> None:
        self.bundle_path, self.text, self.bundle = bundle, text, None
        self.scoring = FROZEN_SCORING if text is not None else BUNDLE_SCORING

    def _encoders(self) -> tuple[Any, Any]:
        from llm2clip.bundle import load_bundle
        from llm2clip.encoders import load_encoders, load_image_encoder

        if self.bundle is None:
            self.bundle = load_bundle(self.bundle_path)
            if self.text is None:
                img, txt = load_encoders(self.bundle, "fp32")
                self.text, self._image = MemoEncoder(txt), MemoImages(img)
            else:
                self._image = MemoImages(load_image_encoder(self.bundle))
        return self._image, self.text

    def evaluate(self, test: Path, per_query: bool = False) -> dict[str, Any]:
        """``training.eval.evaluate``'s result, with ``scoring`` saying how the text side was computed."""
        result = evaluate_encoders(self._encoders(), test, per_query=per_query)
        result.update(model=self.bundle.fingerprint, scoring=self.scoring)
        return result

    def text_twins(self, test: Dataset) -> dict[str, Any] | None:
        """The paraphrase near-twin probe through the row's text side (LLM or text tower, then adapter)."""
        return paraphrase_twin_accuracy(self._encoders()[1].encode, test)
