"""Resident memory of a bundle's text encoder over many calls of varied batch shapes, in one process.

    python bench/text_encoder_memory.py BUNDLE ITEMS [--calls 300] [--trim] [--threads 2]

What a long-running service's text worker does, without HTTP: each round takes 1 to 32 captions of the corpus
``ITEMS`` (an items.jsonl; each caption cut at a random length, so that rows and widths vary as the
batcher's rounds do), cuts them into token-budget calls and encodes them; resident memory is printed every
25 rounds. ``--trim`` hands the heap's free memory back after each round (glibc ``malloc_trim(0)``, what the
service does once per idle period: service/memory.py), which separates memory the allocator keeps as
free high-water marks from memory that is really held. Run it once with and once without, one after the
other on a quiet machine; oneDNN's primitive cache (one entry per new shape, at most
ONEDNN_PRIMITIVE_CACHE_CAPACITY, 1024 by default) is the part that remains. Prints JSON at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm2clip.encoders import load_text_encoder  # noqa: E402
from llm2clip.encoders.base import pad_batch, plan_batches  # noqa: E402
from service.memory import HeapTrimmer, resident_bytes  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="model bundle folder (llm2clip export)")
    p.add_argument("items", help="items.jsonl whose long captions are encoded")
    p.add_argument("--calls", type=int, default=300, help="rounds to run (default 300)")
    p.add_argument("--trim", action="store_true", help="malloc_trim after each round")
    p.add_argument("--threads", type=int, default=2, help="encoder threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    enc = load_text_encoder(args.bundle, threads=args.threads)
    with open(args.items) as f:
        captions = [json.loads(line)["captions"]["long"] for line in f if line.strip()]
    rows, _ = enc.tokenize_each(captions)
    rng = random.Random(args.seed)
    trim = HeapTrimmer(min_interval_s=0)
    enc.warmup()
    start_mib = resident_bytes() / 2**20
    samples = []
    t0 = time.perf_counter()
    for i in range(args.calls):
        picked = [rows[rng.randrange(len(rows))] for _ in range(rng.choice([1, 1, 2, 4, 8, 16, 32]))]
        picked = [r[: rng.randint(max(1, len(r) // 3), len(r))] for r in picked]
        for idx in plan_batches([len(r) for r in picked], enc.max_batch_tokens, enc.max_batch_size):
            enc.encode_tokens(pad_batch([picked[j] for j in idx], enc.pad_id))
        if args.trim:
            trim()
        if (i + 1) % 25 == 0:
            samples.append([i + 1, round(resident_bytes() / 2**20, 1)])
            print(f"round {i + 1}: {samples[-1][1]} MiB", file=sys.stderr, flush=True)
    print(json.dumps({"trim": args.trim, "after_warmup_mib": round(start_mib, 1), "samples": samples,
                      "first_sample_mib": samples[0][1] if samples else None,
                      "end_mib": samples[-1][1] if samples else None,
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
