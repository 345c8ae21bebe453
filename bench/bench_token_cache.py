"""Stage 2's frozen-prefix token cache, side by side in one run: a DINOv2 ViT-S/14 step at 224 px with its last
``--blocks`` blocks trainable, from pixels (every block runs) against from the cached tokens (only the
trainable blocks, the norm and the pool run), plus the one-off cost of building the cache.

    .venv/bin/python bench/bench_token_cache.py [--batch 32] [--blocks 2] [--images 64] [--repeats 3]
                                                [--device cpu|cuda] [--json OUT]

1. Build: ``training.token_cache.build_tokens`` over ``--images`` random images into a float16 ``.npy`` (what
   ``TokenCache.open`` does once per run), bf16 autocast: seconds per image, and the cache's bytes per image.
2. Train step, bf16 autocast, fused AdamW over the trainable parameters, CLIP loss against fixed text
   embeddings (the adapter's side is the same in both and left out), each step reading a random batch of the
   images: from uint8 pixels (``normalize``, the whole tower) against from the cache's tokens
   (``TokenCache.batch``, ``VisionTower.forward_from``). Round-robin, one warm-up each, best of ``--repeats``
   rounds (bench_vision's ``round_robin``): the ratio is what is meant to be read on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_vision import EMBED, _autocast, _sync, round_robin  # noqa: E402

from llm2clip.config import ModelCfg, VisionCfg  # noqa: E402
from llm2clip.model import LLM2CLIP  # noqa: E402
from llm2clip.vision import preprocess_for  # noqa: E402
from training.clip_recipe import clip_loss  # noqa: E402
from training.images import normalize  # noqa: E402
from training.token_cache import TokenCache, build_tokens  # noqa: E402

SIZE = 224


class Step:
    """One step of the image side on a random batch: from pixels, or (``cache``) from the cached tokens."""

    def __init__(self, model: LLM2CLIP, images: np.ndarray, batch: int, cache: TokenCache | None) -> None:
        self.model, self.images, self.batch, self.cache = model.train(), torch.from_numpy(images), batch, cache
        self.device = next(model.parameters()).device
        self.text = F.normalize(torch.randn(batch, EMBED, device=self.device), dim=-1)
        params = [p for p in model.visual.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
        self.rng = np.random.default_rng(0)

    def __call__(self) -> None:
        rows = self.rng.choice(len(self.images), self.batch, replace=False).tolist()
        with _autocast(self.device, True):
            if self.cache is None:
                img = self.model.encode_image(normalize(self.images[rows], self.model.cfg.preprocess).to(self.device))
            else:
                img = self.model.encode_image_tokens(self.cache.batch(rows).to(self.device), self.cache.start)
        clip_loss(img, self.text, self.model.logit_scale).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def make_model(blocks: int, device: torch.device) -> LLM2CLIP:
    from training.clip import default_model_cfg

    cfg: ModelCfg = default_model_cfg(EMBED, 64, SIZE, "bench", 512, VisionCfg(arch="dinov2-s14",
                                                                             trainable_blocks=blocks))
    cfg.preprocess = preprocess_for(cfg.vision)
    torch.manual_seed(0)
    return LLM2CLIP(cfg).to(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=2, help="trainable blocks (the last ones)")
    ap.add_argument("--images", type=int, default=64, help="images in the cache (>= batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    model = make_model(args.blocks, device)
    start = model.visual.frozen_prefix
    images = np.random.default_rng(0).integers(0, 256, (args.images, SIZE, SIZE, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.npy"
        _sync(device)
        t0 = time.perf_counter()
        build_tokens(model, images, start, path, bf16=True, progress=False)
        _sync(device)
        build_s = (time.perf_counter() - t0) / args.images
        cache = TokenCache(path, start)
        bytes_per_image = path.stat().st_size / args.images
        cases = {"from pixels (all 12 blocks)": Step(model, images, args.batch, None),
                 f"from cached tokens (blocks {start}..11)": Step(model, images, args.batch, cache)}
        best = round_robin(cases, args.repeats, device)
    pixels_s, cached_s = best.values()
    rows: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
                            "trainable_blocks": args.blocks, "cached_from_block": start,
                            "build_s_per_image": build_s, "cache_bytes_per_image": bytes_per_image,
                            "step_s": best, "speedup": pixels_s / cached_s,
                            "break_even_epochs": build_s * args.batch / (pixels_s - cached_s)}
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; dinov2-s14 @{SIZE}, "
          f"last {args.blocks} blocks trainable, batch {args.batch}, bf16 autocast")
    print(f"build the cache: {build_s * 1e3:.1f} ms/image, {bytes_per_image / 1024:.0f} KiB/image (float16)")
    for name, sec in best.items():
        print(f"train step {name:36s} | {sec:6.3f} s | {args.batch / sec:6.1f} img/s")
    print(f"speed-up of a step from the cache: {rows['speedup']:.2f}x; the build pays for itself after "
          f"{rows['break_even_epochs']:.2f} epochs")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
