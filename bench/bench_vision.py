"""Vision tower speed, side by side in one run: EfficientNet-Lite0 at 160 px against DINOv2 ViT-S/14 at 224 px.

    .venv/bin/python bench/bench_vision.py [--batch 32] [--repeats 3] [--device cpu|cuda] [--json OUT]

1. The machine's matmul peaks (fp32, bf16 at 2048^3), measured in the forward cases' rounds: the yardstick
   the towers' FLOP/s are read against.
2. Forward (inference, no grad) of the whole vision tower (backbone + attention pool) at ``--batch``, fp32
   and bf16 autocast: images/s, GFLOP per image (counted by ``torch.utils.flop_counter``), achieved GFLOP/s and
   the share of the matching peak.
3. One stage-2 training step of the tower (forward, CLIP loss against fixed text embeddings, backward, fused
   AdamW over the trainable parameters) under bf16 autocast (the training default): EfficientNet-Lite0
   (full), and DINOv2 with the whole backbone, its last 2 blocks, or none of it (LiT) trainable.

The cases run round-robin, ``--repeats`` rounds after one warm-up each, best of each: on a shared machine the
speed drifts, and a case measured in one stretch would carry that drift into the ratios. Pretrained weights
are loaded (as training would), though speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from llm2clip.config import VisionCfg  # noqa: E402
from llm2clip.vision import VisionTower  # noqa: E402
from training.clip_recipe import clip_loss  # noqa: E402

TOWERS = {"efficientnet-lite0 @160": ("efficientnet-lite0", 160), "dinov2-s14 @224": ("dinov2-s14", 224)}
TRAIN_CASES = (("efficientnet-lite0 @160", None), ("dinov2-s14 @224", None), ("dinov2-s14 @224", 2),
               ("dinov2-s14 @224", 0))
EMBED = 256


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def matmul_cases(device: torch.device) -> dict[str, Any]:
    """A large square matmul per precision: run in the same rounds as the towers, so that the peak and the
    towers share the machine's load of the moment (on a shared machine it moves by several times)."""
    n = 2048 if device.type == "cpu" else 8192
    cases = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        cases[f"peak {name}"] = lambda a=a, b=b: a @ b
    return cases


def peak_gflops(seconds: dict[str, float], device: torch.device) -> dict[str, float]:
    n = 2048 if device.type == "cpu" else 8192
    return {prec: 2 * n**3 / seconds.pop(f"peak {prec}") / 1e9 for prec in ("fp32", "bf16")}


def make_tower(arch: str, size: int, trainable_blocks: int | None, device: torch.device) -> VisionTower:
    cfg = VisionCfg(arch=arch, image_size=size, trainable_blocks=trainable_blocks)
    return VisionTower(cfg, EMBED).to(device, memory_format=torch.channels_last)


def gflop_per_image(tower: VisionTower, size: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        tower(torch.zeros(1, 3, size, size, device=device))
    return counter.get_total_flops() / 1e9


class TrainStep:
    """One stage-2 step of a tower alone: CLIP loss against fixed unit text embeddings, fused AdamW."""

    def __init__(self, tower: VisionTower, pixels: torch.Tensor, bf16: bool = True) -> None:
        self.tower, self.pixels, self.bf16 = tower.train(), pixels, bf16
        self.text = F.normalize(torch.randn(len(pixels), EMBED, device=pixels.device), dim=-1)
        self.scale = torch.tensor(2.66, device=pixels.device)
        params = [p for p in tower.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.opt = torch.optim.AdamW(params, lr=1e-5, fused=True)

    def __call__(self) -> None:
        with _autocast(self.pixels.device, self.bf16):
            img = F.normalize(self.tower(self.pixels).float(), dim=-1)
        clip_loss(img, self.text, self.scale).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def round_robin(cases: dict[str, Any], repeats: int, device: torch.device) -> dict[str, float]:
    """Best seconds per call of each case; one warm-up each, then ``repeats`` rounds over all cases."""
    for fn in cases.values():
        fn()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeats):
        for name, fn in cases.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def forward_cases(batch: int, device: torch.device) -> tuple[dict[str, Any], dict[str, float]]:
    cases, gflop = {}, {}
    for label, (arch, size) in TOWERS.items():
        tower = make_tower(arch, size, None, device).eval()
        pixels = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        gflop[label] = gflop_per_image(tower, size, device)
        for prec in ("fp32", "bf16"):
            def run(tower=tower, pixels=pixels, bf16=prec == "bf16") -> None:
                with torch.no_grad(), _autocast(device, bf16):
                    tower(pixels)
            cases[f"{label} {prec}"] = run
    return cases, gflop


def train_cases(batch: int, device: torch.device) -> tuple[dict[str, TrainStep], dict[str, int]]:
    cases = {}
    for label, blocks in TRAIN_CASES:
        arch, size = TOWERS[label]
        pixels = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        name = f"{label} " + ("full" if blocks is None else f"last {blocks} blocks" if blocks else "locked (LiT)")
        cases[name] = TrainStep(make_tower(arch, size, blocks, device), pixels)
    return cases, {k: v.trainable for k, v in cases.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    fwd, gflop = forward_cases(args.batch, device)
    fwd_s = round_robin({**matmul_cases(device), **fwd}, args.repeats, device)
    peaks = peak_gflops(fwd_s, device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak fp32 "
          f"{peaks['fp32']:.0f} / bf16 {peaks['bf16']:.0f} GFLOP/s (best of the same rounds as the forward cases)")
    base = fwd_s["efficientnet-lite0 @160 fp32"]
    rows: dict[str, Any] = {"peaks_gflops": peaks, "batch": args.batch, "forward": {}, "train": {}}
    print(f"\nforward, batch {args.batch} | images/s | GFLOP/image | GFLOP/s | of peak | time vs effnet fp32")
    for name, sec in fwd_s.items():
        label, prec = name.rsplit(" ", 1)
        rate = gflop[label] * args.batch / sec
        rows["forward"][name] = {"images_s": args.batch / sec, "gflop_per_image": gflop[label],
                                 "gflops": rate, "of_peak": rate / peaks[prec], "time_ratio": sec / base}
        print(f"{name:32s} | {args.batch / sec:8.1f} | {gflop[label]:6.2f} | {rate:6.0f} | "
              f"{rate / peaks[prec]:5.0%} | {sec / base:5.2f}x")
    train, trainable = train_cases(args.batch, device)
    train_s = round_robin(train, args.repeats, device)
    full = train_s["dinov2-s14 @224 full"]
    print(f"\ntrain step (bf16 autocast, fused AdamW), batch {args.batch} | images/s | trainable params | "
          "time vs dinov2 full")
    for name, sec in train_s.items():
        rows["train"][name] = {"images_s": args.batch / sec, "trainable_params": trainable[name],
                               "time_ratio": sec / full}
        print(f"{name:40s} | {args.batch / sec:7.1f} | {trainable[name] / 1e6:6.2f}M | {sec / full:5.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
