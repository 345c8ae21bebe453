"""The residual stream after a decoder LLM's first layers, kept per token sequence and shared by every model that
has those layers.

Stage 1 with LoRA on the top layers only (``Stage1Cfg.lora_layers``) leaves the bottom layers of the base LLM as
they were: the stage-1 model and its base compute the same states there for the same tokens. A run that embeds
the same captions with both (the repro's llm_nocc and llm_cc rows, and every stage-1 control) computes the
bottom layers once: the first model through them stores the states after them, and a model with the same
bottom layers starts from the stored states and runs only its top layers.

Layout of a store's folder: one sub-folder per prefix (the fingerprint of the embeddings, the first ``layers``
layers' weights as the encoder holds them, the configuration and the precision), with ``states.f32``
(the states of each sequence's real tokens, float32, appended) and ``index.jsonl`` (sequence key, offset, rows).
A sequence's key is a digest of its token ids, so a text cut at another length is another sequence. A line is
written after its states, and one that points past the end of the file is ignored: an interrupted run leaves a
usable store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["PrefixStates", "sequence_key"]

FORMAT = "llm2clip-prefix-states"
# configuration fields that do not change what the first layers compute
_NOT_PREFIX = {"num_hidden_layers", "transformers_version", "_name_or_path", "_model_name_or_path", "name_or_path",
               "architectures", "torch_dtype", "dtype", "_commit_hash", "layer_types", "max_window_layers"}


def sequence_key(ids: np.ndarray) -> str:
    """The key of one sequence of token ids (its real tokens, in order)."""
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=16).hexdigest()


def prefix_fingerprint(model: Any, layers: int, precision: str) -> str | None:
    """A digest of what the first ``layers`` decoder layers of a Hugging Face decoder compute: the token
    embeddings, those layers' weights (as held: bf16 linears differ from fp32 ones), the configuration and the
    precision. None for a model without ``embed_tokens`` and ``layers`` (an encoder such as MiniLM)."""
    stack, embed = getattr(model, "layers", None), getattr(model, "embed_tokens", None)
    if stack is None or embed is None or not 0 < layers < len(stack):
        return None
    digest = hashlib.blake2b(digest_size=32)
    config = {k: v for k, v in model.config.to_dict().items() if k not in _NOT_PREFIX}
    digest.update(json.dumps({"config": config, "layers": layers, "precision": precision}, sort_keys=True,
                             default=str).encode())
    for prefix, module in [("embed_tokens", embed)] + [(f"layers.{i}", stack[i]) for i in range(layers)]:
        for name, p in module.named_parameters():
            t = p.detach().cpu().contiguous()
            digest.update(f"{prefix}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return digest.hexdigest()


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


class _Prefix:
    """The states of one prefix: an append-only float32 file and its index."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder, self.dim = folder, dim
        folder.mkdir(parents=True, exist_ok=True)
        self.data, self.index_file = folder / "states.f32", folder / "index.jsonl"
        self.index: dict[str, tuple[int, int]] = {}
        size = self.data.stat().st_size // 4 if self.data.is_file() else 0
        if self.data.is_file() and self.data.stat().st_size != size * 4:  # a float cut in half by a killed write
            os.truncate(self.data, size * 4)
        if self.index_file.is_file():
            for line in self.index_file.read_text().splitlines():
                try:
                    key, offset, rows = json.loads(line)
                except ValueError:  # a line cut short by an interrupted write
                    continue
                if offset + rows * dim <= size:
                    self.index[key] = (offset, rows)
        self._end = size

    def get(self, keys: list[str]) -> list[np.ndarray] | None:
        if not all(k in self.index for k in keys):
            return None
        data = np.memmap(self.data, dtype=np.float32, mode="r")
        return [np.array(data[o: o + r * self.dim]).reshape(r, self.dim) for o, r in (self.index[k] for k in keys)]

    def put(self, items: list[tuple[str, np.ndarray]]) -> int:
        """Appends the sequences not stored yet; returns how many."""
        items = [(k, a) for k, a in dict(items).items() if k not in self.index]
        if not items:
            return 0
        with open(self.data, "ab") as f:
            f.seek(0, 2)
            self._end = f.tell() // 4
            lines = []
            for key, states in items:
                block = np.ascontiguousarray(states, dtype=np.float32)
                f.write(block.tobytes())
                lines.append((key, self._end, block.shape[0]))
                self._end += block.size
        with open(self.index_file, "a") as f:
            for key, offset, rows in lines:
                f.write(json.dumps([key, offset, rows]) + "\n")
                self.index[key] = (offset, rows)
        return len(lines)


class PrefixStates:
    """A store of the residual stream after the first ``layers`` decoder layers (see the module's docstring).

    ``for_model`` gives the store of one loaded model's prefix, or None when the model has no such prefix;
    ``reused`` and ``stored`` count the sequences read and written through this object."""

    def __init__(self, folder: str | Path, layers: int) -> None:
        if layers < 1:
            raise ValueError(f"a prefix has at least one layer, not {layers}")
        self.folder, self.layers = Path(folder), layers
        self.reused = self.stored = 0
        self._open: dict[str, _Prefix] = {}

    def for_model(self, model: Any, precision: str) -> _Prefix | None:
        fingerprint = prefix_fingerprint(model, self.layers, precision)
        if fingerprint is None:
            return None
        if fingerprint not in self._open:
            folder = self.folder / f"layers-{self.layers}-{fingerprint[:24]}"
            meta = {"format": FORMAT, "layers": self.layers, "fingerprint": fingerprint,
                    "dim": int(model.config.hidden_size), "precision": precision}
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "prefix.json").is_file():
                (folder / "prefix.json").write_text(json.dumps(meta, indent=2))
            self._open[fingerprint] = _Prefix(folder, meta["dim"])
        return self._open[fingerprint]

    def counts(self) -> dict[str, int]:
        return {"layers": self.layers, "reused": self.reused, "stored": self.stored}
