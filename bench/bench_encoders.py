"""Encoder throughput against the machine's own peaks, measured in one run.

    .venv/bin/python bench/bench_encoders.py [--bundle BUNDLE] [--repeats 3] [--json OUT]

1. The machine's matmul peaks at 2048^3, each the best of the runtimes that have the kernel: fp32 (torch,
   ONNX Runtime MatMul), bf16 (torch), int8 (torch ``_int_mm``, ONNX Runtime ``MatMulInteger`` u8s8), in
   FLOP/s (int8: OP/s).
2. Every text encoder variant of the bundle (ONNX Runtime fp32 / int8, torch bf16) and the old training path
   (torch, fp32 weights under bf16 autocast), at batch 1, 8 and 32 of 64- and 256-token texts: items/s,
   tokens/s, achieved FLOP/s (2 x the LLM's per-token matmul parameters x tokens/s: attention scores are not
   counted) and its share of the matching peak. The cases of one encoder run round-robin, ``--repeats``
   rounds, best of each: on a shared machine the speed drifts, and a case measured in one stretch would
   carry that drift into the batch ratios.
3. The image encoder (ONNX Runtime fp32) at batch 1 and 32.

Without ``--bundle`` it exports an untrained default model (SmolLM2-135M + EfficientNet-Lite0 at 160 px, the
demo's shapes) with all CPU variants to a temporary folder: speed does not depend on the weights. Absolute
numbers vary between machines and runs; the shares and ratios in one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAK_N = 2048


def best_time(fn, repeats: int, min_seconds: float = 0.0) -> float:
    """Best wall time of ``fn`` over ``repeats`` runs after one warm-up (first calls pick kernels)."""
    fn()
    best = float("inf")
    t_end = time.perf_counter() + min_seconds
    n = 0
    while n < repeats or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        n += 1
    return best


def matmul_peaks(threads: int, repeats: int) -> dict[str, float]:
    """GFLOP/s (int8: GOP/s) of a large square matmul in each precision."""
    import torch

    torch.set_num_threads(threads)
    n = PEAK_N
    flops = 2 * n**3
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        peaks[name] = flops / best_time(lambda a=a, b=b: a @ b, repeats) / 1e9
    int8 = []
    a8 = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    b8 = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    try:
        int8.append(flops / best_time(lambda: torch._int_mm(a8, b8), repeats) / 1e9)
    except (RuntimeError, AttributeError):
        pass
    int8.append(flops / best_time(_ort_int8_matmul(n, threads), repeats) / 1e9)
    peaks["int8"] = max(int8)
    peaks["fp32"] = max(peaks["fp32"], flops / best_time(_ort_fp32_matmul(n, threads), repeats) / 1e9)
    return peaks


def _ort_fp32_matmul(n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(n, n)).astype(np.float32), "B")
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["Y"])], "mm",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, (n, n))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, (n, n))], [w])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.normal(size=(n, n)).astype(np.float32)
    return lambda: sess.run(None, {"A": a})


def _ort_int8_matmul(n: int, threads: int):
    """ONNX Runtime MatMulInteger (u8 x s8 -> i32), the kernel family of the int8 text encoder."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = helper.make_tensor("B", TensorProto.INT8, (n, n), rng.integers(-128, 127, (n, n), dtype=np.int8).tobytes(),
                           raw=True)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "mmi",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, (n, n))],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, (n, n))], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 255, (n, n), dtype=np.uint8)
    return lambda: sess.run(None, {"A": a})


def per_token_params(bundle) -> int:
    """Matmul parameters applied to every token: the LLM's linear weights (ONNX MatMul initializers), less
    the adapter's, which run once per text."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle.path / bundle.text_variants["fp32"]["file"]))
    inits = {i.name: i for i in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            total += int(np.prod(numpy_helper.to_array(inits[node.input[1]]).shape))
    a = bundle.manifest["model"].get("adapter") or {}
    if a and bundle.manifest["model"].get("text_tower") is None:
        d, e = a["in_dim"], a["expansion"]
        total -= a["blocks"] * 2 * d * d * e + d * bundle.embed_dim
    return total


def default_bundle(folder: Path, image_size: int):
    import torch

    from llm2clip.defaults import smollm2_dir
    from llm2clip.model import LLM2CLIP
    from llm2clip.text import LLMEncoder
    from training.clip import default_model_cfg
    from training.config import ExportCfg
    from training.export import export_bundle

    llm = LLMEncoder.from_pretrained(smollm2_dir(), attn="eager")
    torch.manual_seed(0)
    model = LLM2CLIP(default_model_cfg(256, llm.dim, image_size, "smollm2-135m-instruct", 512)).eval()
    print("exporting an untrained default model (fp32, int8, bf16) to a temporary bundle ...", file=sys.stderr)
    return export_bundle(model, llm, smollm2_dir(), folder / "bundle", cfg=ExportCfg(
        precisions=("fp32", "int8", "bf16"), check_variants=False, progress=False))


def text_encoders(bundle, threads: int, include_torch_fp32: bool):
    """(label, precision for the peak, encoder) of every variant, plus the old torch fp32 path."""
    from llm2clip.encoders.onnx import OnnxTextEncoder
    from llm2clip.encoders.torch_backend import TorchTextEncoder

    out = []
    for name, variant in bundle.text_variants.items():
        if variant.get("runtime") == "torch":
            enc = TorchTextEncoder.from_bundle(bundle, name, device="cpu", threads=threads)
            out.append((f"torch {name}", name, enc))
        elif name != "fp16":
            out.append((f"onnxruntime {name}", name, OnnxTextEncoder(bundle, threads=threads, precision=name)))
    if include_torch_fp32 and "bf16" in bundle.text_variants:
        # fp32 weights, converted to bf16 at every call by autocast: how training embedded before
        old = TorchTextEncoder.from_bundle(bundle, "bf16", device="cpu", threads=threads)
        old.llm.float()
        out.append(("torch fp32 weights + bf16 autocast (old path)", "bf16", old))
    return out


def text_cases(rng: np.random.Generator, batches: list[int], lengths: list[int]) -> list[tuple[int, int, Any]]:
    """(batch, length, random token batch) of every size measured."""
    from llm2clip.encoders.base import TextBatch

    cases = []
    for length in lengths:
        for batch in batches:
            ids = rng.integers(100, 40000, size=(batch, length)).astype(np.int64)
            cases.append((batch, length, TextBatch(ids, np.ones_like(ids), np.zeros(batch, bool))))
    return cases


def best_seconds(enc, cases: list[tuple[int, int, Any]], repeats: int) -> dict[tuple[int, int], float]:
    """The best time of each case over ``repeats`` round-robin rounds, after one warm-up call each."""
    for _, _, tb in cases:  # warm-up: first calls allocate and pick kernels
        enc.encode_tokens(tb)
    best: dict[tuple[int, int], float] = {}
    for _ in range(repeats):  # round-robin: drift of the machine hits every case alike
        for batch, length, tb in cases:
            t0 = time.perf_counter()
            enc.encode_tokens(tb)
            seconds = time.perf_counter() - t0
            best[(batch, length)] = min(best.get((batch, length), float("inf")), seconds)
    return best


def text_rows(label: str, precision: str, best: dict[tuple[int, int], float], params: int,
              peaks: dict[str, float]) -> list[dict[str, Any]]:
    """One printed and returned row per case: throughput and its share of the matching matmul peak."""
    rows = []
    for (batch, length), seconds in best.items():
        tok_s = batch * length / seconds
        gflops = 2 * params * tok_s / 1e9
        row = {"encoder": label, "precision": precision, "batch": batch, "tokens": length,
               "items_s": batch / seconds, "tok_s": tok_s, "gflops": gflops,
               "share_of_peak": gflops / peaks[precision],
               "share_of_bf16_peak": gflops / peaks["bf16"]}
        rows.append(row)
        print(f"{label:46} {batch:>5} {length:>6} {row['items_s']:>8.2f} {tok_s:>7.0f} {gflops:>8.1f} "
              f"{100 * row['share_of_peak']:>7.1f}%", flush=True)
    return rows


def print_batching(rows: list[dict[str, Any]], lengths: list[int], top_batch: int) -> None:
    print(f"\nbatching: per-item throughput at batch {top_batch} over batch 1")
    for label in dict.fromkeys(r["encoder"] for r in rows):
        for length in lengths:
            one = [r for r in rows if r["encoder"] == label and r["tokens"] == length and r["batch"] == 1]
            big = [r for r in rows if r["encoder"] == label and r["tokens"] == length and r["batch"] == top_batch]
            if one and big:
                print(f"  {label:46} {length:>4} tokens: {big[0]['items_s'] / one[0]['items_s']:.2f}x")


def image_rows(bundle, threads: int, repeats: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    from llm2clip.encoders.onnx import OnnxImageEncoder

    img = OnnxImageEncoder(bundle, threads=threads)
    size = img.preprocess_cfg.size
    rows = []
    for batch in (1, 32):
        pixels = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
        seconds = best_time(lambda p=pixels: img.encode_pixels(p), repeats, min_seconds=1.0)
        rows.append({"encoder": "onnxruntime fp32 image", "batch": batch, "items_s": batch / seconds})
        print(f"image encoder (onnxruntime fp32, {size} px) batch {batch}: {batch / seconds:.1f} images/s")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="model bundle (default: an untrained default model, exported)")
    ap.add_argument("--image-size", type=int, default=160, help="image side of the default model (default 160)")
    ap.add_argument("--repeats", type=int, default=4, help="round-robin rounds, best of each case (default 4)")
    ap.add_argument("--threads", type=int, default=None, help="threads of every runtime (default: all cores)")
    ap.add_argument("--batches", default="1,8,32", help="text batch sizes (default 1,8,32)")
    ap.add_argument("--lengths", default="64,256", help="text lengths in tokens (default 64,256)")
    ap.add_argument("--no-torch-fp32", action="store_true", help="skip the old torch fp32 path")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args()

    import os

    from llm2clip.bundle import load_bundle
    from llm2clip.encoders.capability import probe

    threads = args.threads or os.cpu_count() or 1
    caps = probe()
    print(f"machine: {caps.summary()}, {threads} threads")
    peaks = matmul_peaks(threads, args.repeats)
    print("matmul peaks ({0}^3): fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s, int8 {int8:.0f} GOP/s".format(
        PEAK_N, **peaks))

    tmp = None
    if args.bundle:
        bundle = load_bundle(args.bundle)
    else:
        tmp = tempfile.TemporaryDirectory()
        bundle = default_bundle(Path(tmp.name), args.image_size)
    params = per_token_params(bundle)
    print(f"text encoder: {params / 1e6:.1f}M matmul parameters per token -> {2 * params / 1e6:.0f} MFLOP/token")

    rng = np.random.default_rng(0)
    rows = []
    batches = [int(b) for b in args.batches.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    print(f"{'text encoder':46} {'batch':>5} {'tokens':>6} {'items/s':>8} {'tok/s':>7} {'GFLOP/s':>8} {'of peak':>8}")
    for label, precision, enc in text_encoders(bundle, threads, not args.no_torch_fp32):
        rows += text_rows(label, precision, best_seconds(enc, text_cases(rng, batches, lengths), args.repeats),
                          params, peaks)
        del enc
    print_batching(rows, lengths, max(batches))
    images = image_rows(bundle, threads, args.repeats, rng)
    if args.json:
        args.json.write_text(json.dumps({"machine": caps.summary(), "threads": threads, "peaks": peaks,
                                         "per_token_params": params, "text": rows, "image": images},
                                        indent=2))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
