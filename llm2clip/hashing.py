"""sha256 of files and folders: what bundle manifests record and verify."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: str | Path, exclude: tuple[str, ...] = ("manifest.json",)) -> dict[str, str]:
    """{relative posix path: sha256} of every file under root, sorted, manifest excluded."""
    root = Path(root)
    out: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude:
            continue
        out[rel] = sha256_file(path)
    return out


def fingerprint(files: dict[str, str]) -> str:
    """One id for a set of files: sha256 of their sorted (path, sha256) pairs."""
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()
