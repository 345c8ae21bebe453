"""Does a text encoder put a scene's unseen-style caption next to its own-style caption? Text side only.

    python -m research.text_styles --own OWN --unseen UNSEEN --own-embeddings E1 --unseen-embeddings E2 [--bundle B]

OWN and UNSEEN are the same scenes in the two caption styles (``llm2clip data restyle``); E1 and E2 their
caption embeddings by one text encoder (``llm2clip train embed --data OWN|UNSEEN --text-encoder ...``). For
each scene, its unseen long caption queries the own long captions of every scene: R@1 is how often its own
scene's caption comes first. The same for long -> short within each style, for scale. Embeddings are centred
(the corpus mean removed) before the cosine: mean-pooled LLM states share a large common direction that
would otherwise swamp the differences between captions. No image, no stage 2: where the drop on unseen
phrasing is already in the text side, a stage-2 recipe cannot undo it.

``--bundle B`` measures the same long-caption retrieval after stage 2: through B's exported text side (the LLM,
then the adapter into the joint space), centred and with the plain cosine the service ranks by. If E1 and E2
come from B's LLM, the two numbers say how much of the text side's robustness the adapter keeps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from research.unseen_phrasing import same_scenes


def centred(x: np.ndarray) -> np.ndarray:
    """Rows minus their mean, then unit length."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cross_r1(queries: np.ndarray, keys: np.ndarray) -> float:
    """R@1 of row i of ``queries`` finding row i of ``keys`` (both centred here)."""
    sim = centred(queries) @ centred(keys).T
    return float((sim.argmax(axis=1) == np.arange(len(sim))).mean())


def _matrix(folder: Path, ids: list[str], key: str) -> np.ndarray:
    import torch

    from training.embed import CaptionEmbeddings

    caps = CaptionEmbeddings(folder)
    return torch.stack([caps.get(i, key) for i in ids]).float().numpy()


def run(own_dir: Path, unseen_dir: Path, own_emb: Path, unseen_emb: Path) -> dict[str, Any]:
    from llm2clip.data import read_dataset

    own, unseen = read_dataset(own_dir), read_dataset(unseen_dir)
    same_scenes(own, unseen)
    ids = [it.id for it in own]
    m = {(style, key): _matrix(folder, ids, key) for style, folder in (("own", own_emb), ("unseen", unseen_emb))
         for key in ("long", "short")}
    return {
        "scenes": len(ids),
        "unseen_long_to_own_long_r1": cross_r1(m["unseen", "long"], m["own", "long"]),
        "own_long_to_own_short_r1": cross_r1(m["own", "long"], m["own", "short"]),
        "unseen_long_to_unseen_short_r1": cross_r1(m["unseen", "long"], m["unseen", "short"]),
        "chance": 1.0 / len(ids),
    }


def through_bundle(bundle: Path, own_dir: Path, unseen_dir: Path) -> dict[str, Any]:
    """Unseen long -> own long caption R@1 in a bundle's joint space (its text encoder, fp32), centred and plain."""
    from llm2clip.bundle import load_bundle
    from llm2clip.data import read_dataset
    from llm2clip.encoders.onnx import load_onnx_encoders

    own, unseen = read_dataset(own_dir), read_dataset(unseen_dir)
    same_scenes(own, unseen)
    loaded = load_bundle(bundle)
    _, text = load_onnx_encoders(loaded)
    q, k = text.encode([it.long for it in unseen]), text.encode([it.long for it in own])
    qn, kn = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (q, k))
    plain = float(((qn @ kn.T).argmax(axis=1) == np.arange(len(q))).mean())
    return {"model": loaded.fingerprint, "unseen_long_to_own_long_r1": cross_r1(q, k),
            "unseen_long_to_own_long_r1_plain_cosine": plain}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--own", required=True, type=Path, help="the corpus in the own caption style")
    p.add_argument("--unseen", required=True, type=Path, help="the same scenes in the unseen style")
    p.add_argument("--own-embeddings", required=True, type=Path, help="`llm2clip train embed` of --own")
    p.add_argument("--unseen-embeddings", required=True, type=Path, help="the same text encoder's of --unseen")
    p.add_argument("--bundle", type=Path, default=None,
                   help="also through this model bundle's text side after stage 2 (LLM + adapter)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = run(args.own, args.unseen, args.own_embeddings, args.unseen_embeddings)
    if args.bundle is not None:
        result["bundle"] = through_bundle(args.bundle, args.own, args.unseen)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)  # noqa: T201


if __name__ == "__main__":
    main()
