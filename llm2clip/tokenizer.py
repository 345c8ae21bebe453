"""Tokenization for text encoders; no torch, so the ONNX serving path stays light."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    """Fast tokenizer with right padding and truncation; identical in training, export and serving."""

    def __init__(self, folder: str | Path, max_tokens: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        folder = Path(folder)
        self._tok = HFTokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.max_tokens = max_tokens
        self.pad_id = _pad_id(folder, self._tok)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (input_ids int64 (B, L), attention_mask int64 (B, L), truncated bool (B,))."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        lengths = [len(e.ids) for e in encs]
        width = max(1, min(self.max_tokens, max(lengths, default=1)))
        ids = np.full((len(encs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for i, enc in enumerate(encs):
            row = enc.ids[: self.max_tokens]
            if not row:  # an empty text still gets one token, so mean pooling has something to average
                row = [self.pad_id]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask, np.asarray([n > self.max_tokens for n in lengths])

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


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
