"""Stage 2 of one repro row again, with another adapter: a linear one, or one held to the text side's cosines.

Usage: python -m research.adapter_probe --repro DIR --row ROW --out OUT [--seed K] [--adapter-blocks N]
       [--text-geometry W]

A `llm2clip repro --out DIR` run keeps each row's frozen caption embeddings of the train split (DIR/embeddings).
This trains that row's stage 2 once more into OUT, exactly as the repro does (``research.repro_rows``: the same
scenes, vision tower, recipe, epochs, token cache and seed, from the preset in DIR/report.json), with only the adapter changed: ``--adapter-blocks``
residual MLP blocks (0: LayerNorm and one linear map) and ``--text-geometry`` (stage 2's term that keeps the
adapter's output cosines within a batch close to its input's). It exports OUT/bundle (fp32), which
``research.compare_models`` scores against the row's own bundle on the val split in both caption styles.
A row whose embeddings are not in DIR is refused: run the repro (or its ``--select``) first.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from llm2clip.cliargs import non_negative_int
from llm2clip.config import AdapterCfg
from llm2clip.data import read_dataset
from llm2clip.errors import LLM2CLIPError
from research.repro_config import ReproCfg, stage2_cfg, vision_cfg
from research.repro_rows import RowSpec, embeddings_dir, row_spec


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


def embeddings_of(repro: Path, spec: RowSpec, seed: int) -> Path:
    folder = embeddings_dir(repro, spec, seed)
    if not (folder / "manifest.json").is_file():
        raise SystemExit(f"{folder} holds no caption embeddings: run `llm2clip repro --out {repro}` with this row "
                         "first (it keeps each row's train embeddings)")
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repro", required=True, type=Path, help="a `llm2clip repro --out` folder")
    ap.add_argument("--row", required=True, help="minilm77, minilm, llm_nocc or llm_cc:<recipe>, e.g. llm_cc:hardneg")
    ap.add_argument("--out", required=True, type=Path, help="work folder of this run (resumed)")
    ap.add_argument("--seed", type=non_negative_int, default=0, help="the row's seed (default 0)")
    ap.add_argument("--adapter-blocks", type=non_negative_int, default=AdapterCfg.blocks,
                    help=f"residual MLP blocks of the adapter (default {AdapterCfg.blocks}; 0: LayerNorm and a linear map)")
    ap.add_argument("--text-geometry", type=float, default=0.0,
                    help="weight of the term that keeps the adapter's cosines close to its input's (default 0: off)")
    args = ap.parse_args(argv)
    cfg = config_of(args.repro)
    spec = spec_of(args.row, cfg)
    emb = embeddings_of(args.repro, spec, args.seed)

    from training.clip import Stage2Run, default_model_cfg, train_clip
    from training.config import ExportCfg
    from training.embed import CaptionEmbeddings
    from training.export import export_checkpoint

    train = read_dataset(args.repro / "data" / "train")
    tcfg = replace(stage2_cfg(cfg, len(train)), seed=cfg.seed + args.seed, text_geometry=args.text_geometry)
    mcfg = default_model_cfg(cfg.embed_dim, CaptionEmbeddings(emb).dim, cfg.image_size, spec.key, spec.max_tokens,
                             vision_cfg(cfg))
    mcfg.adapter = replace(mcfg.adapter, blocks=args.adapter_blocks)
    summary = train_clip(Stage2Run(train, emb, args.out / "ckpt", model_cfg=mcfg,
                                   token_cache=args.repro / "token_cache"), tcfg)
    export_checkpoint(args.out / "ckpt", args.out / "bundle", cfg=ExportCfg(precisions=("fp32",)))
    result = {"row": args.row, "seed": args.seed, "adapter_blocks": args.adapter_blocks,
              "text_geometry": args.text_geometry, "steps": summary["steps"],
              "final_loss": (summary["history"] or [{}])[-1].get("loss")}
    (args.out / "probe.json").write_text(json.dumps(result, indent=2))
    sys.stdout.write(f"{args.out / 'bundle'}: {json.dumps(result)}\n")


if __name__ == "__main__":
    main()
