"""FAISS index types at scale, side by side in one run: build time, size on disk, recall@10 against exact search,
queries per second at batch 1 and 64, the tuned search parameter, and the peak memory of a fresh process that
loads and searches the IVF index with and without mmap.

    .venv/bin/python bench/bench_index_scale.py [--n 1000000] [--dim D] [--factory F ...] [--seed 0]
        [--threads T] [--workdir llm2clip-work] [--out DIR] [--json OUT]

The corpus is drawn to look like embeddings, not uniform noise: cluster centres, each a perturbation of a
"parent" vector, and points around them with anisotropic spread (a shared decaying spectrum plus a few
directions of each cluster's own), cluster sizes unequal (log-normal), all L2-normalised. The parents are the
demo's image and caption embeddings (``WORKDIR/indexes/{image,text}``) when they exist at this dimension, else
a synthetic low-rank mixture; the output says which. The 1000 queries are drawn the same way and are not in the
index. Without ``--dim`` the dimension is the demo bundle's ``embed_dim`` (``WORKDIR/bundle/manifest.json``),
else the model config's default.

Every index is built and tuned by the library's own code (``llm2clip.index_tuning``: trained on a seeded
sample, nprobe / efSearch tuned to recall@10 0.95 on held-out corpus vectors); the recall reported here is
measured again on the fresh queries against brute force. Default factories: Flat, what ``choose_index`` picks
at this n under the default memory budget (marked), HNSW32,Flat, IVF{4 sqrt n},Flat, and the OPQ + IVF-PQ it
picks when the budget is an eighth of the vectors' size. The memory probes run in subprocesses (VmHWM from
/proc/self/status) after the build, so the page cache holds the index file in both cases. FAISS runs on
``--threads`` OpenMP threads throughout (faiss.omp_set_num_threads).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm2clip.index_choice import choose_index, nlist_for  # noqa: E402
from llm2clip.index_tuning import IndexBuildCfg, K, build_index, faiss_module, recall_at_k, search, tune_index  # noqa: E402

CHUNK = 65_536
B1_SECONDS = 15.0  # time spent measuring batch-1 QPS per index (at least B1_MIN queries)
B1_MIN = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="corpus vectors (default 1,000,000)")
    ap.add_argument("--dim", type=int, help="vector width (default: the demo bundle's embed_dim, else 256)")
    ap.add_argument("--factory", action="append", dest="factories",
                    help="a FAISS factory string to measure; repeat for several (default: the set above)")
    ap.add_argument("--queries", type=int, default=1000, help="fresh queries, not in the index (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the corpus, the queries and every build")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="FAISS OpenMP threads (default: all)")
    ap.add_argument("--centres", type=int, default=4096, help="clusters in the corpus (default 4096)")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("LLM2CLIP_WORKDIR", "llm2clip-work")),
                    help="the demo's work folder, for its embeddings and embed_dim (optional)")
    ap.add_argument("--out", type=Path, help="where index files are written (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # internal: the memory probe's index file
    ap.add_argument("--probe-queries", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--probe-params", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--probe-mmap", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ---------------------------------------------------------------- data


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def demo_vectors(workdir: Path, dim: int) -> np.ndarray | None:
    """The demo's image and caption embeddings, when its indexes exist at this dimension."""
    from llm2clip.index import load_index

    found = []
    for modality in ("image", "text"):
        folder = workdir / "indexes" / modality
        if not (folder / "manifest.json").is_file():
            return None
        index = load_index(folder, verify=False, device="cpu")
        if index.dim != dim:
            return None
        found.append(index.reconstruct_all())
        index.close()
    return unit(np.concatenate(found))


@dataclass
class Mixture:
    """Clusters around centres with anisotropic spread; ``draw`` samples points from it."""

    centres: np.ndarray  # (C, d) unit
    weights: np.ndarray  # (C,) cluster probabilities, unequal
    spread: np.ndarray  # (C,) noise norm per cluster
    own: np.ndarray  # (C, r, d) each cluster's own directions
    basis: np.ndarray  # (d, d) a random rotation for the shared spectrum
    spectrum: np.ndarray  # (d,) decaying scales, unit norm

    def noise(self, rng: np.random.Generator, which: np.ndarray) -> np.ndarray:
        d = self.basis.shape[0]
        shared = (rng.standard_normal((len(which), d), dtype=np.float32) * self.spectrum) @ self.basis.T
        coef = rng.standard_normal((len(which), self.own.shape[1]), dtype=np.float32)
        own = np.einsum("nr,nrd->nd", coef, self.own[which]) / np.sqrt(self.own.shape[1])
        return (shared + own) / np.sqrt(2)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        out = np.empty((n, self.centres.shape[1]), dtype=np.float32)
        for start in range(0, n, CHUNK):
            which = rng.choice(len(self.centres), min(CHUNK, n - start), p=self.weights)
            x = self.centres[which] + self.spread[which, None] * self.noise(rng, which)
            out[start:start + len(which)] = unit(x)
        return out


def mixture(rng: np.random.Generator, dim: int, n_centres: int, parents: np.ndarray | None) -> tuple[Mixture, str]:
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    spectrum = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
    spectrum /= np.linalg.norm(spectrum)
    if parents is None:  # a low-rank cloud: embeddings use few directions strongly (the demo's: ~10)
        steep = (np.arange(1, dim + 1) ** -1.0).astype(np.float32)
        parents = unit((rng.standard_normal((1000, dim)).astype(np.float32) * steep) @ basis.T)
        source = "synthetic low-rank mixture (1000 parents)"
    else:
        source = f"the demo's {len(parents)} image and caption embeddings as parents"
    own = unit(rng.standard_normal((n_centres * 4, dim)).astype(np.float32)).reshape(n_centres, 4, dim)
    base = Mixture(np.empty(0), np.empty(0), np.empty(0), own, basis, spectrum)
    which = rng.integers(0, len(parents), n_centres)
    centres = unit(parents[which] + 0.4 * base.noise(rng, np.arange(n_centres)))
    weights = rng.lognormal(0.0, 1.0, n_centres)
    # noise about as large as the centre: a query's nearest neighbour at cosine ~0.7, its 10th at ~0.57 (100k
    # rows), where IVF needs a few percent of its lists for recall@10 0.95 rather than one
    spread = rng.uniform(0.9, 1.6, n_centres).astype(np.float32)
    return Mixture(centres, weights / weights.sum(), spread, own, basis, spectrum), source


def default_dim(workdir: Path) -> int:
    manifest = workdir / "bundle" / "manifest.json"
    if manifest.is_file():
        return int(json.loads(manifest.read_text())["embed_dim"])
    from llm2clip.config import ModelCfg

    return ModelCfg().embed_dim


# ---------------------------------------------------------------- measuring


def status_kb() -> dict[str, int]:
    """VmHWM (peak resident), VmRSS, RssAnon, RssFile of this process, in kB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def probe(args: argparse.Namespace) -> None:
    """Runs in a fresh process: load the index (or nothing), search every query at batch 1, report memory."""
    faiss = faiss_module()
    faiss.omp_set_num_threads(args.threads)
    queries = np.load(args.probe_queries)
    report: dict[str, Any] = {"start": status_kb()}
    if args.probe != "none":
        t0 = time.perf_counter()
        index = faiss.read_index(args.probe, faiss.IO_FLAG_MMAP if args.probe_mmap else 0)
        report["load_s"] = round(time.perf_counter() - t0, 3)
        report["loaded"] = status_kb()
        params = json.loads(args.probe_params)
        for i in range(len(queries)):
            search(index, queries[i:i + 1], K, params)
    report["end"] = status_kb()
    print(json.dumps(report))


def run_probe(args: argparse.Namespace, path: str, queries: Path, params: dict[str, Any], mmap: bool) -> dict:
    cmd = [sys.executable, __file__, "--probe", path, "--probe-queries", str(queries),
           "--probe-params", json.dumps(params), "--threads", str(args.threads)] + (["--probe-mmap"] if mmap else [])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def qps(index: Any, queries: np.ndarray, params: dict[str, Any], batch: int) -> float:
    search(index, queries[:batch], K, params)  # warm
    done, t0 = 0, time.perf_counter()
    while done < len(queries) and (batch > 1 or done < B1_MIN or time.perf_counter() - t0 < B1_SECONDS):
        search(index, queries[done:done + batch], K, params)
        done += len(queries[done:done + batch])
    return done / (time.perf_counter() - t0)


def default_factories(n: int, dim: int) -> tuple[list[str], str]:
    chosen = choose_index(n, dim).factory
    quantized = choose_index(n, dim, max(n * dim * 4 // 8, 1)).factory
    wanted = ["Flat", chosen, "HNSW32,Flat", f"IVF{nlist_for(n)},Flat", quantized]
    return list(dict.fromkeys(wanted)), chosen


def measure(args, name: str, vectors: np.ndarray, fresh: np.ndarray, exact: np.ndarray, out: Path) -> dict:
    """Build, tune, search and write one index; returns its row of the table."""
    faiss = faiss_module()
    cfg = IndexBuildCfg(seed=args.seed)
    t0 = time.perf_counter()
    built = build_index(vectors, name, cfg)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    params, tuning = tune_index(built, vectors, cfg)
    tune_s = time.perf_counter() - t0
    built.add_held_out(vectors)
    rows = search(built.index, fresh, K, params)[1]
    recall = recall_at_k(np.where(rows >= 0, built.order[np.maximum(rows, 0)], -1), exact)
    row = {"factory": name, "build_s": round(build_s, 1), "tune_s": round(tune_s, 1),
           "param": tuning.get("param"), "value": tuning.get("value"), "search_params": params,
           "recall_heldout": tuning.get("recall_at_10"), "recall_fresh": round(recall, 4),
           "qps_b1": round(qps(built.index, fresh, params, 1), 1), "qps_b64": round(qps(built.index, fresh, params, 64), 1),
           "training": built.training, "curve": tuning.get("curve")}
    path = out / (name.replace(",", "_") + ".faiss")
    faiss.write_index(built.index, str(path))
    row["bytes"] = path.stat().st_size
    row["path"] = str(path)
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    return row


def table(rows: list[dict], chosen: str) -> str:
    flat = next((r for r in rows if r["factory"] == "Flat"), None)
    lines = ["| index | build s | tune s | on disk | tuned | recall@10 held-out / fresh | QPS b1 | QPS b64 | b1 vs Flat |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " (chosen)" if r["factory"] == chosen else ""
        tuned = f"{r['param']}={r['value']}" if r["param"] else "exact"
        speed = f"{r['qps_b1'] / flat['qps_b1']:.1f}x" if flat else ""
        lines.append(f"| {r['factory']}{mark} | {r['build_s']} | {r['tune_s']} | {r['bytes'] / 2**20:,.0f} MiB | "
                     f"{tuned} | {r['recall_heldout']} / {r['recall_fresh']} | {r['qps_b1']:,} | {r['qps_b64']:,} | "
                     f"{speed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.probe:
        return probe(args)
    faiss = faiss_module()
    faiss.omp_set_num_threads(args.threads)
    dim = args.dim or default_dim(args.workdir)
    rng = np.random.default_rng(args.seed)
    mix, source = mixture(rng, dim, args.centres, demo_vectors(args.workdir, dim))
    t0 = time.perf_counter()
    vectors, fresh = mix.draw(rng, args.n), mix.draw(rng, args.queries)
    print(f"corpus: {args.n:,} x {dim}, {args.centres} clusters around {source}; {args.queries} fresh queries; "
          f"drawn in {time.perf_counter() - t0:.1f} s; FAISS threads {args.threads}", flush=True)
    t0 = time.perf_counter()
    scores, exact = faiss.knn(fresh, vectors, K, metric=faiss.METRIC_INNER_PRODUCT)
    print(f"exact top-{K} of the queries by brute force: {time.perf_counter() - t0:.1f} s; cosine of the nearest "
          f"{scores[:, 0].mean():.3f}, of the {K}th {scores[:, -1].mean():.3f}", flush=True)
    factories, chosen = default_factories(args.n, dim)
    factories = args.factories or factories
    choice = choose_index(args.n, dim)
    print(f"chooser at the default budget ({choice.memory_budget_bytes / 2**30:.1f} GiB): {choice.factory}: "
          f"{choice.reason}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = [measure(args, name, vectors, fresh, exact, out) for name in factories]
        np.save(out / "queries.npy", fresh)
        memory = probes(args, rows, out / "queries.npy")
    report = {"n": args.n, "dim": dim, "source": source, "threads": args.threads, "seed": args.seed,
              "chosen": chosen, "chooser_reason": choice.reason, "rows": rows, "memory": memory}
    print(table(rows, chosen))
    print(memory_table(memory))
    print(verdict(rows, chosen))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def probes(args: argparse.Namespace, rows: list[dict], queries: Path) -> dict:
    """Peak memory of fresh processes: nothing loaded, then the first IVF index read normally and mmapped."""
    ivf = next((r for r in rows if "IVF" in r["factory"] and r["factory"].endswith(",Flat")), None)
    report = {"baseline": run_probe(args, "none", queries, {}, False)}
    if ivf is not None:
        report["factory"] = ivf["factory"]
        report["read"] = run_probe(args, ivf["path"], queries, ivf["search_params"], False)
        report["mmap"] = run_probe(args, ivf["path"], queries, ivf["search_params"], True)
    return report


def memory_table(memory: dict) -> str:
    if "read" not in memory:
        return "(no IVF index measured: no memory probe)"
    base = memory["baseline"]["end"]["VmHWM"]
    lines = [f"Fresh process, {memory['factory']}, every query at batch 1 (interpreter + faiss alone: "
             f"{base / 1024:,.0f} MiB peak)",
             "| load | load s | peak after load | peak after queries | anonymous at end | file-backed at end |",
             "|---|---|---|---|---|---|"]
    for key, label in (("read", "read_index"), ("mmap", "read_index + IO_FLAG_MMAP")):
        m = memory[key]
        lines.append(f"| {label} | {m['load_s']} | {m['loaded']['VmHWM'] / 1024:,.0f} MiB | "
                     f"{m['end']['VmHWM'] / 1024:,.0f} MiB | {m['end']['RssAnon'] / 1024:,.0f} MiB | "
                     f"{m['end']['RssFile'] / 1024:,.0f} MiB |")
    return "\n".join(lines)


def verdict(rows: list[dict], chosen: str) -> str:
    flat = next((r for r in rows if r["factory"] == "Flat"), None)
    pick = next((r for r in rows if r["factory"] == chosen), None)
    if flat is None or pick is None:
        return "target not checked: Flat and the chosen index must both be measured"
    ratio = pick["qps_b1"] / flat["qps_b1"]
    ok = pick["recall_fresh"] >= 0.95 and ratio >= 20
    return (f"target (chosen index recall@10 >= 0.95 at >= 20x Flat's batch-1 QPS): {'met' if ok else 'NOT met'} - "
            f"{chosen}: recall@10 {pick['recall_fresh']} on fresh queries, {ratio:.1f}x Flat at batch 1")


if __name__ == "__main__":
    main()
