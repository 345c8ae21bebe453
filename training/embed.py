"""Frozen LLM caption embeddings, computed once and stored as shards (the paper's offline step).

Stage 2 never runs the LLM: it reads these. Layout of ``out/``:
``manifest.json`` (text encoder, dim, dtype, captions, shard list), ``shard-00000.safetensors`` ...
each with ``embeddings`` (N, dim) in bf16 (or fp32) and a JSON sidecar naming (item id, caption key)
per row. Finished shards are kept, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from llm2clip.data import Dataset
from llm2clip.errors import BundleError
from llm2clip.hashing import sha256_file
from training.config import EmbedCfg

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "llm2clip-caption-embeddings"


def text_encoder_info(folder: str | Path) -> dict[str, Any]:
    """Name, path and fingerprint of a text encoder checkpoint (a Hugging Face folder).

    The fingerprint covers the weights and the model's configuration, not the version of the library that wrote
    the folder: ``transformers_version`` is left out of config.json's digest, so a checkpoint converted or saved
    again by another transformers release (the default SmolLM2 is converted once per machine) keeps its
    fingerprint, and what was trained on it (a stage-1 adapter's card) still fits."""
    import hashlib

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise BundleError(f"{folder} is not a text encoder checkpoint (no config.json): pass a Hugging Face "
                          "model folder")
    weights = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"})
    config = json.loads((folder / "config.json").read_text())
    config.pop("transformers_version", None)
    config_digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    digests = [config_digest] + [sha256_file(p) for p in weights]

    return {
        "name": json.loads((folder / "config.json").read_text()).get("_model_name_or_path") or folder.name,
        "path": str(folder.resolve()),
        "fingerprint": hashlib.sha256("".join(digests).encode()).hexdigest(),
    }


def caption_rows(dataset: Dataset, keys: tuple[str, ...] | None) -> list[tuple[str, str, str]]:
    """(item id, caption key, text) for every caption to embed; keys None means all of them."""
    rows = []
    for item in dataset:
        for key, text in item.captions.items():
            if keys is None or key in keys:
                rows.append((item.id, key, text))
    return rows


def embed_captions(dataset: Dataset, text_encoder: str | Path, out: str | Path, cfg: EmbedCfg | None = None,
                   progress: bool = True, prefix: Any = None) -> dict[str, Any]:
    """Mean-pooled (not normalised) embeddings of every caption by the LLM of ``text_encoder``, computed in
    ``cfg.precision`` (bf16 weights by default: what the CPU's bf16 units and GPUs run fastest) and stored in
    ``cfg.dtype``, through the project's one text encoder interface (token-budget batches).

    ``prefix`` (a ``llm2clip.encoders.prefix_states.PrefixStates``) shares the states of the LLM's first layers
    with other models that have the same ones: the base LLM and a stage-1 model with LoRA on its top layers only
    embed the same captions, and the second runs only its top layers. The embeddings are the same either way."""
    cfg = cfg or EmbedCfg()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = caption_rows(dataset, cfg.captions)
    settings = _settings(dataset, text_encoder, cfg, len(rows))
    done = _resume(out, settings)
    if done is not None:
        return done
    (out / MANIFEST).write_text(json.dumps({"format": FORMAT, **settings, "complete": False}, indent=2))
    from llm2clip.encoders.torch_backend import TorchTextEncoder

    encoder = TorchTextEncoder.from_folder(text_encoder, cfg.max_tokens, precision=cfg.precision, normalize=False,
                                           device=cfg.device, max_batch_tokens=cfg.max_batch_tokens)
    shared = prefix is not None and encoder.share_prefix(prefix)
    before = prefix.counts() if shared else None
    t0 = time.perf_counter()
    shards, tokens = _write_shards(encoder, rows, out, cfg, progress)
    seconds = time.perf_counter() - t0
    manifest = {"format": FORMAT, **settings, "dim": encoder.dim, "shards": shards, "complete": True,
                "seconds": round(seconds, 2), "tokens": tokens,
                "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None}
    if before is not None:  # captions whose first layers' states were read, and written, by this call
        manifest["prefix_states"] = {k: v - before[k] if k != "layers" else v for k, v in prefix.counts().items()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _settings(dataset: Dataset, text_encoder: str | Path, cfg: EmbedCfg, count: int) -> dict[str, Any]:
    """What the shards depend on: a rerun with other settings must not mix its rows with these."""
    from llm2clip.tokenizer import uses_special_tokens

    return {"text_encoder": text_encoder_info(text_encoder), "max_tokens": cfg.max_tokens,
            "add_special_tokens": uses_special_tokens(text_encoder), "dtype": cfg.dtype,
            "precision": cfg.precision, "dataset": str(Path(dataset.root).resolve()),
            "count": count, "shard_size": cfg.shard_size}


def _resume(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The finished manifest when ``out`` is complete, None when there is (still) work to do."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    # made before compute precisions were recorded: fp32 weights under bf16 autocast, closest to bf16
    old.setdefault("precision", "bf16")
    if {k: old.get(k) for k in settings} != settings:
        raise BundleError(f"{out} holds embeddings made with other settings (text encoder, dataset, precision "
                          "or dtype): write them to another folder or delete this one")
    return old if old.get("complete") else None


def _write_shards(encoder: Any, rows: list[tuple[str, str, str]], out: Path, cfg: EmbedCfg,
                  progress: bool) -> tuple[list[str], int]:
    """Every shard not on disk yet; returns the shard names and the number of tokens encoded."""
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[cfg.dtype]
    shards = []
    t0 = time.perf_counter()
    tokens_done = 0
    bar = tqdm(total=len(rows), desc="embed captions", unit="cap", disable=not progress)

    def advance(texts: int, tokens: int) -> None:
        nonlocal tokens_done
        tokens_done += tokens
        bar.update(texts)
        bar.set_postfix(tok_s=f"{tokens_done / (time.perf_counter() - t0):.0f}", refresh=False)

    for shard_no, start in enumerate(range(0, len(rows), cfg.shard_size)):
        chunk = rows[start : start + cfg.shard_size]
        name = f"shard-{shard_no:05d}"
        shards.append(name)
        if (out / f"{name}.safetensors").is_file() and (out / f"{name}.json").is_file():
            bar.update(len(chunk))
            continue
        emb = torch.from_numpy(encoder.encode([r[2] for r in chunk], progress=advance))
        save_file({"embeddings": emb.to(torch_dtype).contiguous()}, str(out / f"{name}.safetensors.tmp"))
        (out / f"{name}.json").write_text(json.dumps([[r[0], r[1]] for r in chunk]))
        os.replace(out / f"{name}.safetensors.tmp", out / f"{name}.safetensors")
    bar.close()
    return shards, tokens_done


class CaptionEmbeddings:
    """All shards in memory: lookup by (item id, caption key)."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise BundleError(f"{folder} holds no caption embeddings: run `llm2clip train embed` first")
        self.manifest = json.loads(path.read_text())
        if not self.manifest.get("complete"):
            raise BundleError(f"caption embeddings in {folder} are incomplete: run `llm2clip train embed` again "
                              "to resume")
        tensors, keys = [], []
        for name in self.manifest["shards"]:
            tensors.append(load_file(str(folder / f"{name}.safetensors"))["embeddings"])
            keys.extend(tuple(k) for k in json.loads((folder / f"{name}.json").read_text()))
        self.embeddings = torch.cat(tensors) if tensors else torch.zeros(0, 0)
        self.row = {k: i for i, k in enumerate(keys)}
        self.by_item: dict[str, list[str]] = {}
        for item_id, key in keys:
            self.by_item.setdefault(item_id, []).append(key)
        self.dim = int(self.manifest["dim"])

    def keys_for(self, item_id: str) -> list[str]:
        return self.by_item.get(item_id, [])

    def get(self, item_id: str, key: str) -> torch.Tensor:
        return self.embeddings[self.row[(item_id, key)]]
