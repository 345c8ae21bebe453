"""The dataset folder: ``items.jsonl`` (one object a line) beside the images it names.

``{"id": str, "image": relative path, "captions": {"long": str, "short": str, ...} | [str, ...], "meta": {...}}``
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm2clip.errors import DatasetError

ITEMS_FILE = "items.jsonl"


@dataclass(frozen=True)
class Item:
    id: str
    image: str  # path relative to the dataset root
    captions: dict[str, str]  # named captions; a list in the file becomes {"0": ..., "1": ...}
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def long(self) -> str:
        """The long caption, or the first one when captions carry no names."""
        return self.captions.get("long") or next(iter(self.captions.values()))

    @property
    def short(self) -> str:
        """The short caption, or the last one when captions carry no names."""
        return self.captions.get("short") or list(self.captions.values())[-1]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image, "captions": self.captions, "meta": self.meta}


def _parse(line: str, lineno: int, path: Path) -> Item:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not isinstance(obj.get("image"), str):
        raise DatasetError(f"{path}:{lineno}: each line needs string fields 'id' and 'image'")
    caps = obj.get("captions", {})
    if isinstance(caps, list):
        caps = {str(i): c for i, c in enumerate(caps)}
    if not isinstance(caps, dict) or not caps or not all(isinstance(v, str) for v in caps.values()):
        raise DatasetError(f"{path}:{lineno}: 'captions' must be a non-empty object or list of strings")
    meta = obj.get("meta") or {}
    return Item(id=obj["id"], image=obj["image"], captions=dict(caps), meta=meta)


@dataclass
class Dataset:
    root: Path
    items: list[Item]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def image_path(self, item: Item) -> Path:
        """The image file of an item; refuses paths that leave the dataset root."""
        path = (self.root / item.image).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise DatasetError(f"item {item.id!r}: image path leaves the dataset folder")
        return path


def read_dataset(path: str | Path) -> Dataset:
    root = Path(path)
    items_file = root / ITEMS_FILE
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist: create one with `llm2clip data scenes --out {root}`")
    if not items_file.is_file():
        raise DatasetError(f"{root} has no {ITEMS_FILE}: is it a dataset folder (see `llm2clip data scenes --help`)?")
    items: list[Item] = []
    seen: set[str] = set()
    with items_file.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            item = _parse(line, lineno, items_file)
            if item.id in seen:
                raise DatasetError(f"{items_file}:{lineno}: duplicate id {item.id!r}")
            seen.add(item.id)
            items.append(item)
    if not items:
        raise DatasetError(f"{items_file} holds no items")
    return Dataset(root=root, items=items)


def write_items(path: str | Path, items: Iterable[Item]) -> None:
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ITEMS_FILE).open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
