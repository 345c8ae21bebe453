"""Is the drop on unseen phrasing one common offset of every unseen caption, or a loss of the scene?

Usage: python -m research.style_offset --model BUNDLE --own VAL --unseen VAL_UNSEEN [--json OUT]

A diagnostic, not a remedy: it uses what a service does not have, the mean embedding of each caption style.
The images and both styles' long captions are embedded once with the bundle's encoders (the variant `llm2clip
eval` picks), on one gallery. Long-caption R@1 both ways, per style, for:

- ``plain``: the service's cosine;
- ``shifted``: each unseen caption moved by the difference of the two styles' mean embeddings (own mean minus
  unseen mean, in the joint space, then unit length again), so the two styles share one mean; the own captions
  stay as they are;
- ``centred``: every caption minus its own style's mean, every image minus the images' mean (the geometry the
  text-side probe of `research.text_styles` reads).

If ``shifted`` recovers most of the own style's R@1, what the model got wrong about the other grammar is mostly
one direction common to all its captions: a thing a training change could target. If it does not, the unseen
captions land on the wrong scenes one by one. Also reported: how long the offset is against the spread of
captions around their style mean, and unseen -> own long caption R@1 in the joint space, plain and shifted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from llm2clip.data import read_dataset
from research.unseen_phrasing import same_scenes
from training.eval import embed_images, embed_texts, ranks


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _r1(text: np.ndarray, image: np.ndarray) -> dict[str, float]:
    sim = text @ image.T
    return {"t2i_r1": float((ranks(sim) == 0).mean()), "i2t_r1": float((ranks(sim.T) == 0).mean())}


def measure(image: np.ndarray, own: np.ndarray, unseen: np.ndarray) -> dict[str, Any]:
    """The three geometries' R@1 from unit embeddings (rows of ``own`` and ``unseen`` are the same scenes as
    the rows of ``image``)."""
    offset = own.mean(0) - unseen.mean(0)
    shifted = _unit(unseen + offset)
    img_c = image - image.mean(0)
    spread = float(np.linalg.norm(own - own.mean(0), axis=1).mean())
    return {
        "plain": {"own": _r1(own, image), "unseen": _r1(unseen, image)},
        "shifted": {"own": _r1(own, image), "unseen": _r1(shifted, image)},
        "centred": {"own": _r1(own - own.mean(0), img_c), "unseen": _r1(unseen - unseen.mean(0), img_c)},
        "offset_length": float(np.linalg.norm(offset)),
        "own_spread": spread,
        "unseen_to_own_caption_r1": {
            "plain": float((ranks(unseen @ own.T) == 0).mean()),
            "shifted": float((ranks(shifted @ own.T) == 0).mean()),
        },
        "scenes": len(image),
    }


def run(model: Path, own_dir: Path, unseen_dir: Path) -> dict[str, Any]:
    from llm2clip.bundle import load_bundle
    from llm2clip.encoders import load_encoders

    own_ds, unseen_ds = read_dataset(own_dir), read_dataset(unseen_dir)
    same_scenes(own_ds, unseen_ds)
    bundle = load_bundle(model)
    img_enc, txt_enc = load_encoders(bundle)
    image = _unit(embed_images(img_enc, own_ds, 32, True))
    own = _unit(embed_texts(txt_enc, [it.long for it in own_ds.items], True, "own long captions"))
    unseen = _unit(embed_texts(txt_enc, [it.long for it in unseen_ds.items], True, "unseen long captions"))
    return {"model": bundle.fingerprint, **measure(image, own, unseen)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a model bundle")
    p.add_argument("--own", required=True, type=Path, help="a corpus in the own caption style")
    p.add_argument("--unseen", required=True, type=Path, help="the same scenes in the unseen style")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    text = json.dumps(run(args.model, args.own, args.unseen), indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
