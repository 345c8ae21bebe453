"""`llm2clip eval`: retrieval metrics of a model bundle, and caption retrieval of a text encoder, on a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llm2clip.cliargs import add_command, positive_int
from training.config import MAX_TOKENS
from training.variants import ALL_PRECISIONS


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "eval", run)
    p.add_argument("--model", type=Path, default=None, help="model bundle folder (`llm2clip export`)")
    p.add_argument("--text-encoder", type=Path, default=None,
                   help="Hugging Face text encoder folder (e.g. `llm2clip train text` output): caption retrieval")
    p.add_argument("--max-tokens", type=positive_int, default=MAX_TOKENS,
                   help=f"--text-encoder reads this many tokens of a caption (default {MAX_TOKENS})")
    p.add_argument("--data", required=True, type=Path, help="dataset folder (items.jsonl + images)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress on stderr)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per encoder call (default 32)")
    p.add_argument("--precision", default="auto", choices=["auto", *ALL_PRECISIONS],
                   help="the bundle's text encoder variant (default auto: what the service would serve here); "
                        "for --text-encoder: bf16 unless fp32 is named")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="ONNX Runtime intra-op threads (default: every core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def _pct(x: float) -> str:
    return f"{100 * x:6.1f}"


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"model    {(result.get('model') or '?')[:12]}",
        f"dataset  {result['dataset']}  ({result['n']} items, gallery = its images / long captions)",
        "",
        f"{'':16}{'t2i R@1':>8}{'R@5':>7}{'R@10':>7}   {'i2t R@1':>8}{'R@5':>7}{'R@10':>7}",
    ]
    for name in ("long", "short"):
        m = result[name]
        lines.append(f"{name + ' captions':16}  {_pct(m['t2i_r1'])} {_pct(m['t2i_r5'])} {_pct(m['t2i_r10'])}"
                     f"     {_pct(m['i2t_r1'])} {_pct(m['i2t_r5'])} {_pct(m['i2t_r10'])}")
    twin = result.get("near_twin")
    lines.append("")
    if twin:
        lines.append(f"near twins ({twin['n_pairs']} pairs): right one ranked above its twin, %")
        for name in ("long", "short"):
            t2i, i2t = _pct(twin[name]["t2i"]), _pct(twin[name]["i2t"])
            lines.append(f"  {name + ' captions':16}t2i {t2i}   i2t {i2t}")
    else:
        lines.append("near twins: none in this dataset (a test split has them)")
    lines.append(f"\n{result['timing']['total_s']:.1f} s")
    return "\n".join(lines)


def format_caption_table(result: dict[str, Any]) -> str:
    return "\n".join([
        f"text encoder  {result['text_encoder']['name']}",
        f"dataset       {result['dataset']}  ({result['n']} items, {result['unique_short']} distinct short captions)",
        "",
        f"{'caption retrieval, top-1 %':28}{'text':>7}{'strict':>8}",
        f"{'  long -> short':28}{_pct(result['long_to_short'])} {_pct(result['long_to_short_strict'])}",
        f"{'  short -> long':28}{_pct(result['short_to_long'])} {_pct(result['short_to_long_strict'])}",
        f"{'  mean':28}{_pct(result['caption_retrieval'])} {_pct(result['caption_retrieval_strict'])}",
    ])


def run(args: argparse.Namespace) -> int:
    """retrieval R@1/5/10 of a model bundle on a dataset (long, short, near twins); caption retrieval of a text
    encoder

    Embed DATA's images and captions with the model bundle's ONNX encoders (what the service serves) and report
    text-to-image and image-to-text recall at 1, 5 and 10, with long and with short captions, and near-twin
    accuracy on test splits. With --text-encoder, report the caption retrieval accuracy of that LLM alone (long
    caption -> its short caption and back, top-1; the stage-1 metric); give --model, --text-encoder or both.
    """
    from llm2clip.errors import LLM2CLIPError

    if args.model is None and args.text_encoder is None:
        raise LLM2CLIPError("give --model BUNDLE, --text-encoder DIR or both")
    result: dict[str, Any] = {}
    caption: dict[str, Any] | None = None
    if args.model is not None:
        from training.eval import evaluate

        result = evaluate(args.model, args.data, batch_size=args.batch_size, progress=not args.no_progress,
                          threads=args.threads, precision=args.precision)
    if args.text_encoder is not None:
        from training.caption_retrieval import caption_retrieval

        caption = caption_retrieval(args.text_encoder, args.data, max_tokens=args.max_tokens,
                                    progress=not args.no_progress,
                                    precision="fp32" if args.precision == "fp32" else "bf16")
        result = _join(result, caption)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        parts = [format_table(result)] if args.model is not None else []
        if caption is not None:
            parts.append(format_caption_table(caption))
        print("\n\n".join(parts))
    return 0


def _join(bundle: dict[str, Any], caption: dict[str, Any]) -> dict[str, Any]:
    """The text encoder's caption retrieval joins the bundle's metrics, shaped as when it runs alone; the
    bundle's keys stay as they are."""
    from training.caption_retrieval import METRICS

    if not bundle:
        return caption
    bundle.update({k: caption[k] for k in (*METRICS, "text_encoder", "unique_long", "unique_short")})
    if isinstance(bundle.get("timing"), dict):
        bundle["timing"]["caption_retrieval_s"] = caption["seconds"]
    return bundle
