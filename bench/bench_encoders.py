"""Encoder throughput: PyTorch eager fp32 against the ONNX Runtime model bundle, measured in one run.

    .venv/bin/python bench/bench_encoders.py [--checkpoint CKPT --bundle BUNDLE] [--repeats 5]

Without a checkpoint it builds an untrained model from the offline defaults (SmolLM2-135M + EfficientNet-
Lite0, same shapes as the demo) and exports it: speed does not depend on the weights. Prints one table
and the ORT/PyTorch speed ratio per case; absolute numbers vary on a shared machine, ratios much less.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm2clip.encoders.onnx import load_onnx_encoders  # noqa: E402
from llm2clip.model import ImageEncoderModule, TextEncoderModule  # noqa: E402
from llm2clip.text import LLMEncoder  # noqa: E402


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="stage-2 checkpoint (default: untrained defaults)")
    ap.add_argument("--bundle", type=Path, help="its exported model bundle (with --checkpoint)")
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: all cores)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    tmp = None
    if args.checkpoint:
        from training.checkpoint import load_checkpoint

        model, text_info = load_checkpoint(args.checkpoint)
        llm = LLMEncoder.from_pretrained(text_info["path"])
        bundle = args.bundle
    else:
        from llm2clip.defaults import smollm2_dir
        from llm2clip.model import LLM2CLIP
        from training.clip import default_model_cfg
        from training.export import export_bundle

        llm = LLMEncoder.from_pretrained(smollm2_dir())
        torch.manual_seed(0)
        model = LLM2CLIP(default_model_cfg(256, llm.dim, args.image_size, "smollm2-135m-instruct", 512)).eval()
        tmp = tempfile.TemporaryDirectory()
        bundle = Path(tmp.name) / "bundle"
        print("exporting an untrained default model to a temporary bundle ...", file=sys.stderr)
        export_bundle(model, LLMEncoder.from_pretrained(smollm2_dir(), attn="eager"), smollm2_dir(), bundle)
    model.eval()
    img_ort, txt_ort = load_onnx_encoders(bundle, threads=threads)
    img_pt = ImageEncoderModule(model).eval()
    txt_pt = TextEncoderModule(llm, model.adapter).eval()

    rng = np.random.default_rng(0)
    size = img_ort.preprocess_cfg.size
    rows = []
    for batch in (1, 32):
        pixels = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
        tp = torch.from_numpy(pixels)
        with torch.inference_mode():
            pt, _ = best_of(lambda tp=tp: img_pt(tp), args.repeats)
        ort, _ = best_of(lambda p=pixels: img_ort.encode_pixels(p), args.repeats)
        rows.append({"encoder": "image", "batch": batch, "tokens": None, "torch_items_s": batch / pt,
                     "ort_items_s": batch / ort, "ort_over_torch": pt / ort})
    for tokens in (64, 256):
        for batch in (1, 32):
            ids = rng.integers(100, 40000, size=(batch, tokens)).astype(np.int64)
            mask = np.ones_like(ids)
            ti, tm = torch.from_numpy(ids), torch.from_numpy(mask)
            from llm2clip.encoders.base import TextBatch

            tb = TextBatch(ids, mask, np.zeros(batch, bool))
            with torch.inference_mode():
                pt, _ = best_of(lambda ti=ti, tm=tm: txt_pt(ti, tm), args.repeats)
            ort, _ = best_of(lambda tb=tb: txt_ort.encode_tokens(tb), args.repeats)
            rows.append({"encoder": "text", "batch": batch, "tokens": tokens, "torch_items_s": batch / pt,
                         "ort_items_s": batch / ort, "ort_over_torch": pt / ort})

    print(f"threads={threads} image_size={size} (best of {args.repeats}; PyTorch eager fp32 vs ONNX Runtime fp32)")
    print(f"{'encoder':8} {'batch':>5} {'tokens':>6} {'torch/s':>10} {'ort/s':>10} {'ORT/torch':>10}")
    for r in rows:
        print(f"{r['encoder']:8} {r['batch']:>5} {r['tokens'] or '-':>6} {r['torch_items_s']:>10.1f} "
              f"{r['ort_items_s']:>10.1f} {r['ort_over_torch']:>9.2f}x")
    if args.json:
        print(json.dumps(rows))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
