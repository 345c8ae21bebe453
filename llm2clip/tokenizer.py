"""Tokenization for text encoders; no torch, so the ONNX serving path stays light."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"


def normalize_text(text: str) -> str:
    """NFC, whitespace runs (newlines too) as one space, no leading or trailing space: two texts that differ
    only there mean the same to a reader, so they get one embedding (and one query cache entry)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def source_offset(text: str, normalized_end: int) -> int:
    """Where the first ``normalized_end`` characters of ``normalize_text(text)`` end in ``text`` (in its NFC
    form: the text itself for what browsers and most clients send): ``text[:result]`` normalises to them.
    Normalisation only drops and merges whitespace, so every kept character has one place in the source."""
    source = unicodedata.normalize("NFC", text)
    seen = 0  # normalised characters produced so far
    pending_space = False  # a whitespace run inside the text: one space once a character follows it
    for i, ch in enumerate(source):
        if seen >= normalized_end:
            return i
        if ch.isspace():
            pending_space = seen > 0
            continue
        if pending_space:
            seen += 1
            pending_space = False
            if seen >= normalized_end:
                return i
        seen += 1
        if seen >= normalized_end:
            return i + 1
    return len(source)


class Tokenizer:
    """Fast tokenizer with right padding and truncation; identical in training, export and serving."""

    def __init__(self, folder: str | Path, max_tokens: int, add_special_tokens: bool | None = None) -> None:
        """``add_special_tokens`` None: decided from the model folder's config (BERT-type encoders were
        trained with [CLS] ... [SEP]; decoder LLMs are mean pooled over the plain text)."""
        from tokenizers import Tokenizer as HFTokenizer

        folder = Path(folder)
        self._tok = HFTokenizer.from_file(str(folder / TOKENIZER_FILE))
        self._tok.no_padding()
        # the library's own truncation keeps the closing special token ([SEP]) of encoder models
        self._tok.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens
        self.add_special_tokens = uses_special_tokens(folder) if add_special_tokens is None else add_special_tokens
        self.pad_id = _pad_id(folder, self._tok)

    def ids(self, texts: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """-> (int64 token ids per text, unpadded; truncated flags (B,)). An empty text gets one padding
        token, so mean pooling has something to average."""
        encs = self._tok.encode_batch([normalize_text(t) for t in texts], add_special_tokens=self.add_special_tokens)
        rows = [np.asarray(e.ids or [self.pad_id], dtype=np.int64) for e in encs]
        return rows, np.asarray([bool(e.overflowing) for e in encs], dtype=bool)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (input_ids int64 (B, L), attention_mask int64 (B, L), truncated bool (B,)), right padded."""
        rows, truncated = self.ids(texts)
        width = max(1, max((len(r) for r in rows), default=1))
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask, truncated

    def kept_chars(self, text: str) -> int | None:
        """How many characters of ``text`` (NFC, see ``source_offset``) the encoder reads when it cuts the
        text at ``max_tokens``: the end of the last kept token. None when nothing is cut."""
        enc = self._tok.encode(normalize_text(text), add_special_tokens=self.add_special_tokens)
        if not enc.overflowing:
            return None
        ends = [end for (_, end), special in zip(enc.offsets, enc.special_tokens_mask, strict=True) if not special]
        return source_offset(text, max(ends, default=0))

    def token_id(self, token: str) -> int | None:
        """The vocabulary id of ``token``, None when the vocabulary lacks it."""
        found = self._tok.token_to_id(token)
        return None if found is None else int(found)

    def count(self, text: str) -> int:
        """Tokens of ``text`` without truncation."""
        enc = self._tok.encode(normalize_text(text), add_special_tokens=self.add_special_tokens)
        return len(enc.ids) + sum(len(o.ids) for o in enc.overflowing)


DECODER_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text",
                 "phi", "phi3", "gpt2", "gpt_neox", "falcon", "olmo", "olmo2", "smollm3"}


def uses_special_tokens(folder: str | Path) -> bool:
    """True for encoder-only models (BERT family), False for decoder LLMs and for folders without a config."""
    cfg_file = Path(folder) / "config.json"
    if not cfg_file.is_file():
        return False
    cfg = json.loads(cfg_file.read_text())
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") in DECODER_TYPES or any(a.endswith("ForCausalLM") for a in archs):
        return False
    return not cfg.get("is_decoder", False)


def _pad_id(folder: Path, tok) -> int:
    cfg_file = folder / "tokenizer_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        for key in ("pad_token", "eos_token"):
            name = cfg.get(key)
            if isinstance(name, dict):
                name = name.get("content")
            if name and tok.token_to_id(name) is not None:
                return int(tok.token_to_id(name))
    return 0
