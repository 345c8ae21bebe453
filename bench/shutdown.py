"""SIGTERM in the middle of a load: what every request got, and how long the server took to exit.

    python bench/shutdown.py --model BUNDLE --image-index IDX --text-index IDX [--signal-after 5]
                             [--grace 3] [--requests 2000] [--concurrency 32] [--items ITEMS_JSONL]

Starts ``llm2clip serve`` on a free port of 127.0.0.1 with LLM2CLIP_SHUTDOWN_TIMEOUT_S=``--grace``, runs
bench/load.py's mixed load, sends SIGTERM ``--signal-after`` seconds into it and lets the load run on. Each
request ends one of these ways:

- answered: 200, 429 ``overloaded`` or 503 ``shutting_down`` (accepted, then failed cleanly by the drain);
- ``ConnectError``: sent after the listener closed, it never reached the server;
- ``ReadError`` / ``RemoteProtocolError`` after the signal: a connection the server closed unanswered
  because it had not read the request yet (or an idle keep-alive connection it was closing).

It passes when nothing else happened: no other status, no connection closed unanswered *before* the signal,
nothing waiting past the grace period, no "timeout graceful shutdown exceeded" in the server's log (uvicorn
cancelling an accepted request at the deadline), exit status 0 within ``--exit-within`` seconds of the signal
(default: the grace period + 5 s; an encoder call longer than the grace period is waited for before the
exit, see service/shutdown.py, so raise it for a model whose calls take longer).
With a model slower than the load (a real LLM text path on a CPU), the drain has queued work to fail, so
the 503 path runs; the tiny test bundle finishes its queue first. Prints a JSON report; exit status 1 on a
failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load import LoadConfig, Outcome, corpus_payloads, generated_payloads, mix_option, run_load  # noqa: E402
from soak import start_server  # noqa: E402

ANSWERS = {(200, None), (429, "overloaded"), (503, "shutting_down")}
UNANSWERED = {"ConnectError", "ReadError", "RemoteProtocolError"}
EXIT_MARGIN_S = 5.0


def classify(outcomes: list[Outcome], signalled: float, grace: float) -> dict[str, Any]:
    """Counts of what the requests got, and the ones that break the contract (see the module's doc)."""
    counts: dict[str, int] = {}
    bad: list[Outcome] = []
    for o in outcomes:
        end = o.start + o.seconds
        label = o.error or f"{o.status} {o.code or ''}".strip()
        when = "before" if end < signalled else "after"
        counts[f"{label} ({when} the signal)"] = counts.get(f"{label} ({when} the signal)", 0) + 1
        if o.error is None:
            ok = (o.status, o.code) in ANSWERS
        else:
            ok = o.error in UNANSWERED and end >= signalled
        if not ok or end > max(o.start, signalled) + grace + 1:
            bad.append(o)
    return {"outcomes": dict(sorted(counts.items(), key=lambda kv: -kv[1])), "broken": len(bad),
            "broken_examples": [vars(o) for o in bad[:5]]}


@dataclass(frozen=True)
class Plan:
    """When to signal, the server's grace period, the exit bound (default grace + 5 s), where its log goes."""

    signal_after: float = 5.0
    grace: float = 3.0
    exit_within: float | None = None
    server_log: Path | None = None


def run(serve_args: list[str], cfg: LoadConfig, payloads: Any, plan: Plan) -> dict[str, Any]:
    signal_after, grace, server_log = plan.signal_after, plan.grace, plan.server_log
    exit_within = plan.exit_within or grace + EXIT_MARGIN_S
    log = server_log or Path(tempfile.mkstemp(prefix="llm2clip-shutdown-", suffix=".log")[1])
    proc, url = start_server(serve_args, log=log, log_level="info", env={"LLM2CLIP_SHUTDOWN_TIMEOUT_S": str(grace)})
    cfg = LoadConfig(url, cfg.requests, cfg.concurrency, cfg.mix, cfg.key, cfg.timeout_s)
    events: dict[str, float] = {}

    def on_start(t0: float) -> None:
        def terminate() -> None:
            events["signal"] = time.perf_counter() - t0
            events["signal_abs"] = time.monotonic()
            proc.send_signal(signal.SIGTERM)

        asyncio.get_running_loop().call_later(signal_after, terminate)

    watcher = threading.Thread(target=lambda: (proc.wait(), events.setdefault("exit_abs", time.monotonic())),
                               daemon=True)
    watcher.start()
    try:
        outcomes = asyncio.run(run_load(cfg, payloads, on_start=on_start))
        watcher.join(exit_within + EXIT_MARGIN_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        output = log.read_text(errors="replace")
        if server_log is None:
            log.unlink()
    if "signal" not in events:
        raise SystemExit("shutdown: the load ended before the signal: send more --requests or lower --signal-after")
    exited_after = events.get("exit_abs", time.monotonic()) - events["signal_abs"]
    report = {"signal_after_s": round(events["signal"], 2), "grace_s": grace,
              "exit_status": proc.returncode, "exited_after_s": round(exited_after, 2),
              "cancelled_at_deadline": "timeout graceful shutdown exceeded" in output,
              "traceback_in_log": "Traceback" in output,
              **classify(outcomes, events["signal"], grace)}
    report["passed"] = (report["exit_status"] == 0 and exited_after < exit_within
                        and not report["cancelled_at_deadline"] and not report["traceback_in_log"]
                        and report["broken"] == 0)
    return report


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model bundle of the server to start")
    ap.add_argument("--image-index", type=Path, help="image index of the server to start")
    ap.add_argument("--text-index", type=Path, help="caption index of the server to start")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads per encoder (default 2)")
    ap.add_argument("--signal-after", type=float, default=5.0, help="seconds of load before SIGTERM (default 5)")
    ap.add_argument("--grace", type=float, default=3.0,
                    help="LLM2CLIP_SHUTDOWN_TIMEOUT_S of the server: its graceful shutdown's bound (default 3)")
    ap.add_argument("--requests", "-n", type=int, default=2000, help="requests the load would send (default 2000)")
    ap.add_argument("--concurrency", "-c", type=int, default=32, help="requests in flight at most (default 32)")
    ap.add_argument("--mix", type=mix_option, default="text=4,image=3,embed=3",
                    help="relative weights of text search, image search and embed (default text=4,image=3,embed=3)")
    ap.add_argument("--items", type=Path, help="a dataset's items.jsonl for captions and images (default: "
                                               "generated)")
    ap.add_argument("--exit-within", type=float, help="seconds after the signal the server must have exited in "
                                                      "(default: --grace + 5)")
    ap.add_argument("--server-log", type=Path, metavar="FILE", help="keep the server's output here")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the report here")
    args = ap.parse_args(argv)
    if not (args.signal_after > 0 and args.grace > 0 and args.requests > 0 and args.concurrency > 0):
        ap.error("--signal-after, --grace, --requests and --concurrency must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    serve_args = ["--model", str(args.model), "--threads", str(args.threads)]
    for flag, value in (("--image-index", args.image_index), ("--text-index", args.text_index)):
        if value is not None:
            serve_args += [flag, str(value)]
    payloads = corpus_payloads(args.items) if args.items else generated_payloads()
    cfg = LoadConfig("", args.requests, args.concurrency, args.mix, timeout_s=30.0)
    report = run(serve_args, cfg, payloads, Plan(args.signal_after, args.grace, args.exit_within, args.server_log))
    text = json.dumps(report, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)  # noqa: T201
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
