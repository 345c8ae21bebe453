"""What sharing SmolLM2's bottom layers saves when a second model with the same bottom layers embeds the same
captions: the repro's llm_cc (stage 1 with LoRA on the top 15 of 30 layers) after llm_nocc (the base).

    .venv/bin/python bench/bench_prefix_states.py --data DIR [--n 600] [--second STAGE1_DIR] [--layers 15] [--json OUT]

DIR is a generated split (``llm2clip data scenes``); the first N scenes' long and short captions are embedded as
``training.embed.embed_captions`` embeds a train split (bf16, unnormalised, cut at 512 tokens). The passes, one
after the other in one process, each over the same texts:

- ``base``: the base LLM alone, nothing shared (the repro before this change); run first and again last, so the
  machine's drift over the run shows;
- ``base_store``: the base LLM keeping the states after its first ``--layers`` layers
  (``llm2clip.encoders.prefix_states``): what the first SmolLM2 to embed a caption now pays;
- ``second_shared``: the second model from those states, its top layers only;
- ``second``: the second model alone, for the agreement check (skipped when the second model is the base: its
  output is ``base``'s).

``--second`` is a stage-1 folder with LoRA on the top layers only (``llm2clip train text --lora-layers 15``);
without it the base itself is the second model (the same work per pass). Absolute times vary with the machine
and its load; compare the ratios of one run.
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

from llm2clip.data import read_dataset  # noqa: E402
from llm2clip.defaults import smollm2_dir  # noqa: E402
from llm2clip.encoders.prefix_states import PrefixStates  # noqa: E402
from llm2clip.encoders.torch_backend import TorchTextEncoder  # noqa: E402


def _pass(folder: Path, texts: list[str], store: PrefixStates | None) -> tuple[np.ndarray, float, bool]:
    enc = TorchTextEncoder.from_folder(folder, 512, precision="bf16", normalize=False)
    shared = store is not None and enc.share_prefix(store)
    enc.encode(texts[:8])  # kernels and allocator warm; these texts are also in the timed pass
    t0 = time.perf_counter()
    out = enc.encode(texts)
    return out, time.perf_counter() - t0, shared


def run(data: Path, n: int, second: Path, layers: int) -> dict[str, Any]:
    ds = read_dataset(data)
    texts = [t for it in ds.items[:n] for t in (it.long, it.short)]
    base = smollm2_dir()
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = PrefixStates(Path(tmp) / "prefix", layers)
        ref, times["base"], _ = _pass(base, texts, None)
        _, times["base_store"], ok_base = _pass(base, texts, store)
        shared_out, times["second_shared"], ok_second = _pass(second, texts, store)
        own = ref
        if second.resolve() != base.resolve():
            own, times["second"], _ = _pass(second, texts, None)
        _, times["base_again"], _ = _pass(base, texts, None)
        counts = store.counts()
    cos = (shared_out * own).sum(1) / np.linalg.norm(shared_out, axis=1) / np.linalg.norm(own, axis=1)
    plain = (times["base"] + times["base_again"]) / 2
    return {"texts": len(texts), "layers": layers, "second": second.name, "shared": ok_base and ok_second,
            "counts": counts, "seconds": {k: round(v, 2) for k, v in times.items()},
            "base_store_over_base": round(times["base_store"] / plain, 3),
            "speedup_second_shared": round(plain / times["second_shared"], 3),
            "agreement": {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(shared_out - own).max())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a generated split (llm2clip data scenes)")
    ap.add_argument("--n", type=int, default=600, help="scenes whose long and short captions are embedded")
    ap.add_argument("--second", type=Path, default=None,
                    help="a stage-1 folder with LoRA on the top layers only (default: the base again)")
    ap.add_argument("--layers", type=int, default=15, help="bottom layers shared (SmolLM2 has 30)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args(argv)
    result = run(args.data, args.n, args.second or smollm2_dir(), args.layers)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
