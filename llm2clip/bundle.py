"""The model bundle: what export writes and what index_builder and service read.

A folder with ``manifest.json``, ``image_encoder.onnx``, ``text_encoder.onnx`` and ``tokenizer/``.
The manifest records the preprocessing, tokenizer settings, precision, the sha256 of every file and one
fingerprint; an index bundle names the fingerprint of the model bundle that built it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llm2clip.config import PreprocessCfg
from llm2clip.errors import BundleError
from llm2clip.hashing import fingerprint, hash_tree, sha256_file
from llm2clip.manifest import ManifestField

FORMAT = "llm2clip-model-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGE_ONNX = "image_encoder.onnx"
TEXT_ONNX = "text_encoder.onnx"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class ModelBundle:
    path: Path
    manifest: dict[str, Any]

    fingerprint = ManifestField("fingerprint", kind=str)
    embed_dim = ManifestField("embed_dim", kind=int)
    max_tokens = ManifestField("text", "max_tokens", kind=int)

    @property
    def preprocess(self) -> PreprocessCfg:
        img = self.manifest["image"]
        return PreprocessCfg(size=int(img["size"]), resize=img["resize"], mean=tuple(img["mean"]), std=tuple(img["std"]))

    @property
    def image_onnx(self) -> Path:
        return self.path / self.manifest["image"]["file"]

    @property
    def text_onnx(self) -> Path:
        return self.path / self.manifest["text"]["file"]

    @property
    def text_variants(self) -> dict[str, dict[str, Any]]:
        """Text encoder variants by precision: ``{"fp32": {"file", "runtime", ...}, "int8": {..., "check"}}``.
        A bundle of format 1 has its fp32 ONNX file only."""
        text = self.manifest["text"]
        variants = text.get("variants")
        if not variants:
            return {"fp32": {"file": text["file"], "runtime": "onnxruntime", "precision": "fp32"}}
        return dict(variants)

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / self.manifest["text"]["tokenizer"]


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``folder`` into the manifest, add the fingerprint, write it; returns it."""
    folder = Path(folder)
    files = hash_tree(folder)
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **manifest,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "fingerprint": fingerprint(files),
    }
    (folder / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return full


def staging_dir(target: str | Path) -> Path:
    """A temporary sibling of ``target``: bundles are written there, then moved in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))


def publish(staging: Path, target: str | Path) -> None:
    """Replace ``target`` by ``staging`` so that readers never see a half-written bundle."""
    target = Path(target)
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.rename(target, old / "x")
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, target)


def read_manifest(folder: str | Path, kind: str, expected_format: str) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.exists():
        raise BundleError(f"{kind} {folder} does not exist: check the path, or build one first")
    if not folder.is_dir() or not (folder / MANIFEST).is_file():
        raise BundleError(f"{folder} is not a {kind}: it has no {MANIFEST}")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(f"{folder / MANIFEST} is not valid JSON: rebuild the {kind}") from None
    if manifest.get("format") != expected_format:
        raise BundleError(f"{folder} is not a {kind} (format {manifest.get('format')!r}, expected {expected_format!r})")
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any], kind: str, deep: bool) -> None:
    files = manifest.get("files") or {}
    for rel, digest in files.items():
        path = folder / rel
        if not path.is_file():
            raise BundleError(f"{kind} {folder} is incomplete: {rel} is missing; rebuild it")
        if deep and sha256_file(path) != digest:
            raise BundleError(f"{kind} {folder} is corrupt: {rel} does not match its sha256; rebuild it")
    if fingerprint(files) != manifest.get("fingerprint"):
        raise BundleError(f"{kind} {folder}: the manifest fingerprint does not match its files list")


def load_bundle(folder: str | Path, verify: bool = True) -> ModelBundle:
    """Read and check a model bundle. ``verify`` re-hashes every file (seconds for a 600 MB bundle)."""
    folder = Path(folder)
    manifest = read_manifest(folder, "model bundle", FORMAT)
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise BundleError(f"model bundle {folder} has format version {manifest['format_version']}; upgrade llm2clip")
    for key in ("embed_dim", "image", "text", "fingerprint"):
        if key not in manifest:
            raise BundleError(f"model bundle {folder}: manifest lacks {key!r}; re-export it")
    verify_files(folder, manifest, "model bundle", deep=verify)
    return ModelBundle(path=folder, manifest=manifest)
