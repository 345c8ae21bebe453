"""Stage 2 of one repro row again, with another adapter: a linear one, or one held to the text side's cosines.

Usage: python -m research.adapter_probe --repro DIR --row ROW --out OUT [--seed K] [--adapter-blocks N]
       [--text-geometry W] [--other-words N] [--alt-captions N] [--caption-keys KEYS]
       [--trainable-blocks N --backbone-lr LR] [--epochs N]

A `llm2clip repro --out DIR` run keeps each row's frozen caption embeddings of the train split (DIR/embeddings).
This trains that row's stage 2 once more into OUT, exactly as the repro does (``research.repro_rows``: the same
scenes, vision tower, recipe, epochs, token cache and seed, from the preset in DIR/report.json), with only the adapter changed: ``--adapter-blocks``
residual MLP blocks (0: LayerNorm and one linear map) and ``--text-geometry`` (stage 2's term that keeps the
adapter's output cosines within a batch close to its input's). It exports OUT/bundle (fp32), which
``research.compare_models`` scores against the row's own bundle on the val split in both caption styles.
A row whose embeddings are not in DIR is refused: run the repro (or its ``--select``) first.

``--other-words N`` also draws captions in other words in stage 2: each train scene gets ``long_w1`` .. ``long_wN``
(``llm2clip data scenes --other-words``: the long caption with WordNet synonyms, from the scene's own stream of the
repro's train seed), embedded once by the row's own text encoder into OUT/embeddings-added and read with the row's
embeddings; ``--alt-captions N`` does the same with ``long_a1`` .. ``long_aN``, the scene's long caption in the
alt grammar (``llm2clip data scenes --alt-captions``); ``--caption-keys`` says how stage 2 draws among them (e.g.
``long,long_w1,short,short``).

``--trainable-blocks N`` trains the vision backbone's last N blocks (the repro locks it, 0) with ``--backbone-lr``
as the top block's rate, and ``--epochs`` replaces the preset's: the vision-side oracle's best tower
(``research.oracle_text_side``, OLB1: block 8 of DINOv2-S14 trained at 5e-5) on a real row's text side.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from llm2clip.cliargs import non_negative_int, positive_float, positive_int
from llm2clip.config import AdapterCfg
from llm2clip.data import read_dataset
from llm2clip.errors import LLM2CLIPError
from research.repro_config import ReproCfg, stage2_cfg, vision_cfg
from research.repro_rows import RowSpec, embeddings_dir, row_spec
from training.config import caption_keys


def config_of(repro: Path) -> ReproCfg:
    """The preset the repro ran with (its report's ``config``), so that a ``--quick`` run is probed as it trained."""
    report = repro / "report.json"
    if not report.is_file():
        raise SystemExit(f"{report} is missing: `llm2clip repro --out {repro}` writes it when it finishes")
    known = set(ReproCfg.__dataclass_fields__)
    return ReproCfg(**{k: v for k, v in json.loads(report.read_text())["config"].items() if k in known})


def spec_of(row: str, cfg: ReproCfg) -> RowSpec:
    """A repro row with a frozen text encoder: minilm77, minilm, llm_nocc, or ``llm_cc:<recipe>`` (the row names of
    ``llm2clip repro --rows``)."""
    try:
        spec = row_spec(row, cfg)
    except LLM2CLIPError as exc:
        raise SystemExit(f"{exc}: give minilm77, minilm, llm_nocc or llm_cc:<recipe>") from None
    if spec.encoder is None:
        raise SystemExit(f"{row} trains its own text tower: it has no adapter to change")
    return spec


def embeddings_of(repro: Path, spec: RowSpec, seed: int, train_text: bool = False) -> Path:
    """The row's cached train caption embeddings; with ``train_text``, a stage-1 row's missing ones are made as the
    repro makes them (its stage 1 trained into the repro's folder, then the train captions embedded): only the
    train split and stage 1's held-out val split are read."""
    folder = embeddings_dir(repro, spec, seed)
    if not (folder / "manifest.json").is_file():
        if not train_text:
            raise SystemExit(f"{folder} holds no caption embeddings: run `llm2clip repro --out {repro}` with this "
                             "row first (it keeps each row's train embeddings), or pass --train-text")
        from research.repro_rows import Work, embeddings

        work = Work(repro, config_of(repro), read_dataset(repro / "data" / "train"), read_dataset(repro / "data" / "val"))
        return embeddings(work, spec, seed)
    return folder


def with_extra_captions(repro: Path, emb: Path, out: Path, words: int, cfg: ReproCfg, alt: int = 0):
    """(the repro's train split with ``words`` captions in other words and ``alt`` in the alt grammar per scene,
    in memory; a folder of caption embeddings holding the row's and those captions', the new ones embedded by the
    row's text encoder)."""
    import shutil

    from llm2clip.data.generator import add_alt_captions, add_other_words
    from research.repro import SPLIT_SEEDS
    from training.config import EmbedCfg
    from training.embed import MANIFEST, embed_captions, text_encoder_info

    train = read_dataset(repro / "data" / "train")
    add_other_words(train.items, "train", cfg.seed + SPLIT_SEEDS["train"], words)
    add_alt_captions(train.items, "train", cfg.seed + SPLIT_SEEDS["train"], alt)
    row = json.loads((emb / MANIFEST).read_text())
    encoder = Path(row["text_encoder"]["path"])
    if not encoder.is_dir() or text_encoder_info(encoder)["fingerprint"] != row["text_encoder"]["fingerprint"]:
        raise SystemExit(f"{encoder}, the text encoder {emb} was embedded with, is gone or changed: the added "
                         "captions need it")
    keys = tuple(f"long_w{k}" for k in range(1, words + 1)) + tuple(f"long_a{k}" for k in range(1, alt + 1))
    extra = embed_captions(train, encoder, out / "embeddings-added", EmbedCfg(captions=keys, max_tokens=row["max_tokens"]))
    both = out / "embeddings"
    both.mkdir(parents=True, exist_ok=True)
    for tag, folder, shards in (("row", emb, row["shards"]), ("added", out / "embeddings-added", extra["shards"])):
        for name in shards:
            for suffix in (".json", ".safetensors"):
                shutil.copy2(folder / f"{name}{suffix}", both / f"{tag}-{name}{suffix}")
    manifest = {**row, "count": row["count"] + extra["count"], "merged": {"row": str(emb), "added": list(keys)},
                "shards": [f"row-{n}" for n in row["shards"]] + [f"added-{n}" for n in extra["shards"]]}
    (both / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return train, both


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repro", required=True, type=Path, help="a `llm2clip repro --out` folder")
    ap.add_argument("--row", required=True, help="minilm77, minilm, llm_nocc or llm_cc:<recipe>, e.g. llm_cc:hardneg")
    ap.add_argument("--out", required=True, type=Path, help="work folder of this run (resumed)")
    ap.add_argument("--seed", type=non_negative_int, default=0, help="the row's seed (default 0)")
    ap.add_argument("--adapter-blocks", type=non_negative_int, default=AdapterCfg.blocks,
                    help=f"residual MLP blocks of the adapter (default {AdapterCfg.blocks}; 0: LayerNorm and a linear map)")
    ap.add_argument("--text-geometry", type=float, default=0.0,
                    help="weight of the term that keeps the adapter's cosines close to its input's (default 0: off)")
    ap.add_argument("--other-words", type=non_negative_int, default=0,
                    help="captions in other words per train scene (long_w1 ..), embedded by the row's text encoder")
    ap.add_argument("--alt-captions", type=non_negative_int, default=0,
                    help="captions in the alt grammar per train scene (long_a1 ..), embedded by the row's text encoder")
    ap.add_argument("--train-text", action="store_true",
                    help="train a stage-1 row's text side into the repro folder first when it has none yet (stage 1 "
                         "reads the train and val splits only)")
    ap.add_argument("--caption-keys", type=caption_keys, default=None,
                    help="the caption keys stage 2 draws from, comma-separated, repeats weigh (default: the repro's)")
    ap.add_argument("--trainable-blocks", type=non_negative_int, default=None,
                    help="train the vision backbone's last N blocks (default: the repro's, 0: locked)")
    ap.add_argument("--backbone-lr", type=positive_float, default=None,
                    help="learning rate of the top trained backbone block (default: the preset's lr x layer decay)")
    ap.add_argument("--epochs", type=positive_int, default=None, help="stage 2's epochs (default: the repro's)")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = _parser()
    args = ap.parse_args(argv)
    cfg = config_of(args.repro)
    vision = vision_cfg(cfg)
    if args.trainable_blocks is not None:
        vision = replace(vision, trainable_blocks=args.trainable_blocks)
    if args.backbone_lr is not None and not vision.trainable_blocks:
        ap.error("--backbone-lr is the rate of trained backbone blocks: give --trainable-blocks N > 0 with it")
    spec = spec_of(args.row, cfg)
    emb = embeddings_of(args.repro, spec, args.seed, args.train_text)
    if (args.other_words or args.alt_captions) and spec.encoder is None:
        raise SystemExit(f"{args.row} has no frozen text encoder to embed added captions with")

    from training.clip import Stage2Run, default_model_cfg, train_clip
    from training.config import ExportCfg
    from training.embed import CaptionEmbeddings
    from training.export import export_checkpoint

    train = read_dataset(args.repro / "data" / "train")
    if args.other_words or args.alt_captions:
        train, emb = with_extra_captions(args.repro, emb, args.out, args.other_words, cfg, args.alt_captions)
    tcfg = replace(stage2_cfg(cfg, len(train), args.epochs), seed=cfg.seed + args.seed,
                   text_geometry=args.text_geometry, backbone_lr=args.backbone_lr)
    if args.caption_keys:
        tcfg = replace(tcfg, caption_keys=args.caption_keys)
    mcfg = default_model_cfg(cfg.embed_dim, CaptionEmbeddings(emb).dim, cfg.image_size, spec.key, spec.max_tokens,
                             vision)
    mcfg.adapter = replace(mcfg.adapter, blocks=args.adapter_blocks)
    summary = train_clip(Stage2Run(train, emb, args.out / "ckpt", model_cfg=mcfg,
                                   token_cache=args.repro / "token_cache"), tcfg)
    export_checkpoint(args.out / "ckpt", args.out / "bundle", cfg=ExportCfg(precisions=("fp32",)))
    result = {"row": args.row, "seed": args.seed, "adapter_blocks": args.adapter_blocks,
              "text_geometry": args.text_geometry, "other_words": args.other_words, "alt_captions": args.alt_captions,
              "caption_keys": list(tcfg.caption_keys), "trainable_blocks": vision.trainable_blocks,
              "backbone_lr": tcfg.backbone_lr, "epochs": tcfg.epochs, "steps": summary["steps"],
              "final_loss": (summary["history"] or [{}])[-1].get("loss")}
    (args.out / "probe.json").write_text(json.dumps(result, indent=2))
    sys.stdout.write(f"{args.out / 'bundle'}: {json.dumps(result)}\n")


if __name__ == "__main__":
    main()
