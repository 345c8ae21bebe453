"""`llm2clip`: data, train, export, eval, index, serve, demo.

Each component registers its own subcommands; heavy imports (torch, onnxruntime, faiss) happen only
inside the command that needs them, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from llm2clip import __version__
from llm2clip.cliargs import add_command, non_negative_int, positive_int, share


def _add_data(subparsers) -> None:
    data = subparsers.add_parser("data", help="make datasets (the bundled long-caption scene corpus)",
                                 description="Dataset tools.")
    sub = data.add_subparsers(dest="data_cmd", required=True, metavar="{scenes,restyle}")
    s = add_command(sub, "scenes", _run_data)
    s.add_argument("--out", required=True, type=Path, help="output folder (items.jsonl + images/)")
    s.add_argument("--n", required=True, type=positive_int, help="number of scenes")
    s.add_argument("--split", required=True, choices=["train", "val", "test"],
                   help="train/val draw Fashion-MNIST train images; test draws test images and near twins")
    s.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    s.add_argument("--caption-style", choices=["own", "unseen"], default="own",
                   help="own (default): the grammar training reads; unseen: the same scenes and images, captioned "
                        "by a second, independent grammar (other sentence orders and words), for evaluation only")
    s.add_argument("--other-words", type=non_negative_int, default=0, metavar="N",
                   help="add N captions per scene for training (keys long_w1..N): the long caption with each class, "
                        "size, orientation and texture word swapped, with probability 1/2, for a WordNet synonym "
                        "(purse for bag, inverted for upside down); default 0")
    s.add_argument("--alt-captions", type=non_negative_int, default=0, metavar="N",
                   help="add N captions per scene for training (keys long_a1..N): the scene's long caption in a "
                        "third grammar, the same facts in other sentence orders and constructions; default 0")
    s.add_argument("--alt-in-place", type=share, default=0.0, metavar="P",
                   help="train split only: put the long caption of a share P of the scenes (0 to 1) in that third "
                        "grammar instead (the caption --alt-captions 1 adds as long_a1), so that training reads "
                        "both grammars with no more captions to embed; default 0")
    r = add_command(sub, "restyle", _run_restyle)
    r.add_argument("--data", required=True, type=Path, help="a scene corpus folder (`llm2clip data scenes`)")
    r.add_argument("--out", required=True, type=Path, help="output folder for the restyled corpus")
    r.add_argument("--style", choices=["unseen"], default="unseen",
                   help="the caption style to rewrite the captions in (default unseen)")
    r.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the phrasing draws (default 0); the corpus's own seed gives what "
                        "`data scenes --caption-style unseen` writes")


def _run_data(args: argparse.Namespace) -> int:
    """generate the scene corpus (long captions, near twins in the test split)

    Compose scenes of real Fashion-MNIST product photos with exact long captions (see DATASET.md). Same
    arguments, same bytes. --caption-style unseen writes the same scenes and image bytes with captions of a
    second grammar that training never sees (other sentence orders, synonyms for classes, sizes, positions,
    orientations and relations): score a model on both to see whether it learned the scenes or the template.
    """
    from llm2clip.data import generate_scenes
    from llm2clip.data.generator import SceneCaptions

    ds = generate_scenes(args.out, args.n, args.split, args.seed,
                         captions=SceneCaptions(args.caption_style, args.other_words, args.alt_captions,
                                                 args.alt_in_place))
    print(f"{len(ds)} {args.split} scenes in {args.out} ({args.caption_style} captions)")
    return 0


def _run_restyle(args: argparse.Namespace) -> int:
    """rewrite a scene corpus's captions in the unseen style, keeping its images

    Read DATA (a folder `llm2clip data scenes` wrote, e.g. the demo's test corpus) and write OUT with the same
    ids, scene graphs and images (hard-linked, or copied across file systems; nothing is rendered again) and
    captions of the evaluation-only unseen grammar, made from each item's scene graph; near twins are phrased
    together so that their captions differ only where their facts do. Then `llm2clip eval --data OUT` scores a
    model on phrasing it was never trained on; compare with `--data DATA`.
    """
    from llm2clip.data.restyle import restyle_corpus

    ds = restyle_corpus(args.data, args.out, args.seed, args.style)
    print(f"{len(ds)} scenes of {args.data} in {args.out} ({args.style} captions)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from index_builder import cli as index_cli
    from llm2clip_cli import demo
    from research import repro_cli
    from service import cli as service_cli
    from training import cli as train_cli
    from training import eval_cli

    parser = argparse.ArgumentParser(
        prog="llm2clip",
        description="LLM2CLIP long-caption image retrieval: scene corpus, stage-2 training, ONNX export, "
                    "FAISS indexes and the HTTP service. `llm2clip demo` runs everything on the offline defaults.",
    )
    parser.add_argument("--version", action="version", version=f"llm2clip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data(sub)
    train_cli.add_parser(sub)
    eval_cli.add_parser(sub)
    index_cli.add_parser(sub)
    service_cli.add_parser(sub)
    repro_cli.add_parser(sub)
    demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from llm2clip.errors import LLM2CLIPError

    try:
        return args.func(args)
    except LLM2CLIPError as exc:
        print(f"llm2clip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llm2clip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
