"""Can the bundled instruct LLM rewrite training captions faithfully? (issue 14, diverse training captions)

The paper diversifies its training captions with recaptions by other models (DreamLIP's). The only generative
model that ships offline here is SmolLM2-135M-Instruct. This probe asks it to rewrite long captions of train
scenes and checks every rewrite against the scene graph:

- kept: an object counts as kept when one sentence of the rewrite names its colour and its class
  (the own grammar's nouns, singular or plural: a faithful rewrite that used a synonym would count as a miss,
  so ``kept`` is a lower bound; ``invented`` below is not affected);
- kept with size and orientation: the same sentence also names the object's size and orientation (its cell
  is not checked: every check here is lenient, a rewrite that moves an object still passes);
- invented: "<colour> ... <class>" within three words that matches no object of the scene;
- degenerate: a run of 6 words repeated 3 or more times;
- faithful: every object kept with size and orientation, nothing invented, not degenerate;
- copied: the share of the rewrite's 4-word runs that occur in the source caption (1.0: no new phrasing).

    python -m research.llm_rewrites --data llm2clip-work/data/train --n 32 --json rewrites.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

PROMPT = ("Rewrite this image description in your own words. Keep every fact (each object's colour, size, "
          "position and orientation, and the background); change the sentence order and wording.\n\n")
WINDOW = 3  # words between a colour and the class it describes


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:-[a-z]+)?", text.lower())


def _class_forms() -> dict[str, set[str]]:
    from llm2clip.data.captions.wording import NOUNS

    return {cls: {form.split()[-1] for form in forms} for cls, forms in NOUNS.items()}


def check_rewrite(text: str, meta: dict[str, Any], source: str) -> dict[str, Any]:
    """Facts of ``meta`` kept and invented by ``text`` (see the module docstring)."""
    from llm2clip.data.scene_graph import COLOURS

    forms = _class_forms()
    sentences = [_words(s) for s in re.split(r"[.;!?]", text) if s.strip()]
    long_sentences = [" ".join(_words(s)) for s in re.split(r"[.!?]", text) if s.strip()]
    kept = kept_full = 0
    for obj in meta["objects"]:
        nouns = forms[obj["class"]]
        if any(obj["colour"] in s and nouns & set(s) for s in sentences):
            kept += 1
        if any(re.search(rf"\b{obj['colour']}\b", s) and any(re.search(rf"\b{n}\b", s) for n in nouns)
               and re.search(rf"\b{obj['size']}", s) and obj["orientation"] in s for s in long_sentences):
            kept_full += 1
    present = {(o["colour"], o["class"]) for o in meta["objects"]}
    invented = 0
    for s in sentences:
        for i, w in enumerate(s):
            if w not in COLOURS:
                continue
            for cls, nouns in forms.items():
                if nouns & set(s[i + 1:i + 1 + WINDOW]) and (w, cls) not in present:
                    invented += 1
    words = _words(text)
    six = [" ".join(words[i:i + 6]) for i in range(len(words) - 5)]
    degenerate = any(six.count(g) >= 3 for g in set(six))
    src = _words(source)
    src4 = {" ".join(src[i:i + 4]) for i in range(len(src) - 3)}
    own4 = [" ".join(words[i:i + 4]) for i in range(len(words) - 3)]
    copied = sum(g in src4 for g in own4) / len(own4) if own4 else 1.0
    n = len(meta["objects"])
    return {"objects": n, "kept": kept, "kept_full": kept_full, "invented": invented, "degenerate": degenerate,
            "faithful": kept_full == n and invented == 0 and not degenerate, "copied": round(copied, 3)}


def rewrite(texts: list[str], batch: int = 8, seed: int = 0, progress: bool = True) -> tuple[list[str], dict]:
    """Sampled rewrites of ``texts`` by SmolLM2-135M-Instruct (bf16, temperature 0.7, top-p 0.9)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm2clip.defaults import smollm2_dir

    folder = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    torch.manual_seed(seed)
    out, new_tokens, t0 = [], 0, time.perf_counter()
    for i in tqdm(range(0, len(texts), batch), desc="rewrite", unit="batch", disable=not progress):
        chunk = texts[i:i + batch]
        prompts = [tok.apply_chat_template([{"role": "user", "content": PROMPT + t}], tokenize=False,
                                           add_generation_prompt=True) for t in chunk]
        enc = tok(prompts, return_tensors="pt", padding=True)
        budget = int(1.3 * max(len(tok(t).input_ids) for t in chunk))
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=budget, do_sample=True, temperature=0.7, top_p=0.9,
                                 pad_token_id=tok.pad_token_id)
        gen = gen[:, enc.input_ids.shape[1]:]
        new_tokens += int((gen != tok.pad_token_id).sum())
        out += [tok.decode(g, skip_special_tokens=True).strip() for g in gen]
    seconds = time.perf_counter() - t0
    return out, {"new_tokens": new_tokens, "seconds": round(seconds, 1), "tokens_s": round(new_tokens / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    from llm2clip.data import read_dataset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a scene corpus (items with a scene graph)")
    p.add_argument("--n", type=int, default=32, help="captions to rewrite (the corpus's first N)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the rewrites and their checks here")
    p.add_argument("--recheck", type=Path, default=None,
                   help="a --json file of an earlier run: check its rewrites again (no generation)")
    args = p.parse_args(argv)
    items = read_dataset(args.data).items[:args.n]
    sources = [it.captions["long"] for it in items]
    if args.recheck:
        old = json.loads(args.recheck.read_text())
        by_id = {r["id"]: r["rewrite"] for r in old["rows"]}
        items = [it for it in items if it.id in by_id]
        sources = [it.captions["long"] for it in items]
        texts = [by_id[it.id] for it in items]
        speed = {k: old["summary"][k] for k in ("new_tokens", "seconds", "tokens_s")}
    else:
        texts, speed = rewrite(sources, args.batch, args.seed)
    checks = [check_rewrite(t, it.meta, s) for t, it, s in zip(texts, items, sources, strict=True)]
    n = len(checks)
    summary = {
        "rewrites": n, **speed,
        "faithful": sum(c["faithful"] for c in checks) / n,
        "objects_kept": sum(c["kept"] for c in checks) / sum(c["objects"] for c in checks),
        "objects_kept_with_size_and_orientation": sum(c["kept_full"] for c in checks) / sum(c["objects"]
                                                                                           for c in checks),
        "with_invented_objects": sum(c["invented"] > 0 for c in checks) / n,
        "degenerate": sum(c["degenerate"] for c in checks) / n,
        "copied_4grams": sum(c["copied"] for c in checks) / n,
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": [
            {"id": it.id, "source": s, "rewrite": t, **c} for it, s, t, c in zip(items, sources, texts, checks,
                                                                                 strict=True)]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
