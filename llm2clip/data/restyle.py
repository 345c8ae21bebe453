"""A scene corpus folder restyled: the same images (hard-linked, or copied across file systems), new captions.

``restyle_corpus(data, out)`` reads ``data/items.jsonl`` and writes ``out`` with the captions of
``captions.unseen`` made from each item's scene graph, without rendering anything again: a corpus
made elsewhere (the demo's test corpus) gets an unseen-style twin whose images are byte for byte its
own. With the seed the corpus was generated with, the result is what ``generate_scenes(...,
captions="unseen")`` writes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tqdm import tqdm

from llm2clip.data.captions.long import default_token_counter
from llm2clip.data.captions.unseen import STYLE, restyle_items
from llm2clip.data.dataset import Dataset, read_dataset, write_items
from llm2clip.data.generator import prepare_out
from llm2clip.errors import DatasetError

RESTYLE_STYLES = (STYLE,)


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        # another file system, or one without hard links
        shutil.copy2(src, dst)


def restyle_corpus(
    data: Path | str, out: Path | str, seed: int = 0, style: str = STYLE, progress: bool = True
) -> Dataset:
    """Write ``data``'s scenes to ``out`` with captions in ``style``; images linked or copied, never rendered."""
    if style not in RESTYLE_STYLES:
        raise DatasetError(f"unknown caption style {style!r}: a corpus can be restyled to {', '.join(RESTYLE_STYLES)}")
    source = read_dataset(data)
    out = Path(out)
    if out.resolve() == source.root.resolve():
        raise DatasetError(f"--out {out} is the corpus being restyled: choose another folder")
    # every caption first: a corpus that cannot be restyled leaves out untouched
    items = restyle_items(source.items, seed, default_token_counter(), progress)
    prepare_out(out)
    for item in tqdm(items, desc="images", unit="image", disable=not progress):
        _place(source.image_path(item), out / item.image)
    # written last: a folder without items.jsonl is an unfinished run
    write_items(out, items)
    return Dataset(root=out, items=items)
