"""Does ``torch.compile`` speed up the EfficientNet-Lite0 stage-2 step on CPU? Side by side in one run.

    .venv/bin/python bench/bench_effnet_compile.py [--batch 64] [--repeats 3]

One stage-2 training step of EfficientNet-Lite0 at 160 px (the demo's tower until plan F, docs/results/demo-cc.md):
forward, CLIP loss against fixed text embeddings, backward, fused AdamW; eager under bf16 autocast (what training
runs), eager fp32, and ``torch.compile`` (inductor) under bf16 autocast. The compile's warm-up is timed once; the
cases then run round-robin with the matmul peaks (``bench_vision``), best of ``--repeats`` rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_vision, which puts the project on the path

import torch  # noqa: E402
from bench_vision import TrainStep, make_tower, matmul_cases, peak_gflops, round_robin  # noqa: E402

SIZE = 160


def step(batch: int, bf16: bool, compiled: bool) -> TrainStep:
    tower = make_tower("efficientnet-lite0", SIZE, None, torch.device("cpu"))
    pixels = torch.randn(batch, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    s = TrainStep(tower, pixels, bf16)
    if compiled:
        s.tower = torch.compile(tower)
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    cpu = torch.device("cpu")
    compiled = step(args.batch, True, True)
    t0 = time.perf_counter()
    compiled()
    compiled()
    print(f"compile warm-up (2 steps): {time.perf_counter() - t0:.0f} s")
    cases = {**matmul_cases(cpu), "eager bf16 autocast": step(args.batch, True, False),
             "eager fp32": step(args.batch, False, False), "compiled bf16 autocast": compiled}
    best = round_robin(cases, args.repeats, cpu)
    peaks = peak_gflops(best, cpu)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak fp32 {peaks['fp32']:.0f} / "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s (same rounds)")
    base = best["eager bf16 autocast"]
    for name, sec in best.items():
        print(f"{name:24s} {args.batch / sec:6.1f} images/s  {base / sec:4.2f}x eager bf16")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
