"""The compose stack run natively: each service's own command and environment from `docker-compose config`, its
volumes replaced by folders, servers on 127.0.0.1 (two api replicas, HAProxy in front with deploy/haproxy's
config, Prometheus with deploy/prometheus' config and rules, its scrape target rewritten from docker's DNS to
the replicas)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from compose_project import REPO, Remap, compose_config, service_environment

DEPLOY = REPO / "deploy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process' environment without the developer's LLM2CLIP_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM2CLIP_")}
    return {**env, "TOKENIZERS_PARALLELISM": "false", **extra}


@dataclass
class Stack:
    tmp: Path
    remap: Remap
    project: dict = field(default_factory=compose_config)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    # one-shot jobs ---------------------------------------------------------------------------------------
    def run_job(self, service: str) -> subprocess.CompletedProcess:
        spec = self.project["services"][service]
        env = clean_env(self.remap.environment(service_environment(spec)))
        done = subprocess.run(self.remap.command(spec["command"]), env=env, capture_output=True, text=True,
                              timeout=300, cwd=self.tmp)
        assert done.returncode == 0, f"{service} failed:\n{done.stdout}\n{done.stderr}"
        return done

    # servers ---------------------------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        self.procs[name] = subprocess.Popen(argv, env=clean_env(env or {}), stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.tmp, start_new_session=True)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def start_api(self, name: str, overrides: dict[str, str]) -> None:
        """An api replica: compose's command and environment; host and port moved to 127.0.0.1:<free>."""
        spec = self.project["services"]["api"]
        port = free_port()
        env = {**self.remap.environment(service_environment(spec)), "LLM2CLIP_HOST": "127.0.0.1",
               "LLM2CLIP_PORT": str(port), **overrides}
        self.ports[name], self.envs[name] = port, env
        self.start(name, self.remap.command(spec["command"]), env)

    def healthcheck(self, name: str) -> subprocess.CompletedProcess:
        """The api's compose healthcheck command, run with the replica's environment."""
        test = self.project["services"]["api"]["healthcheck"]["test"]
        return subprocess.run(self.remap.command(test[1:]), env=clean_env(self.envs[name]), capture_output=True,
                              text=True, timeout=30)

    def wait_healthy(self, name: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.healthcheck(name).returncode != 0:
            proc = self.procs[name]
            assert proc.poll() is None, f"{name} exited:\n{self.log(name)}"
            assert time.monotonic() < deadline, f"{name} not ready in {timeout} s:\n{self.log(name)}"
            time.sleep(0.5)

    def start_proxy(self, replicas: list[str]) -> None:
        """deploy/haproxy/haproxy.cfg with its DNS server template replaced by the replicas' addresses."""
        cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
        servers = "\n".join(f"    server {r} 127.0.0.1:{self.ports[r]}" for r in replicas)
        cfg, n = re.subn(r"^\s*server-template .*$", servers, cfg, flags=re.MULTILINE)
        assert n == 1
        self.ports["proxy"] = free_port()
        cfg = cfg.replace("bind :8000", f"bind 127.0.0.1:{self.ports['proxy']}")
        path = self.tmp / "haproxy.cfg"
        path.write_text(cfg)
        self.start("proxy", ["haproxy", "-db", "-f", str(path)])
        wait_http(f"{self.url('proxy')}/readyz", self, "proxy")

    def start_prometheus(self, replicas: list[str]) -> None:
        """deploy/prometheus/prometheus.yml scraping the replicas every second, with its rules."""
        cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
        cfg["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in cfg["rule_files"]]
        job = cfg["scrape_configs"][0]
        del job["dns_sd_configs"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{self.ports[r]}" for r in replicas]}]
        path = self.tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg))
        self.ports["prometheus"] = free_port()
        self.start("prometheus", ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                                  f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}", "--log.level=warn"])
        wait_http(f"{self.url('prometheus')}/-/ready", self, "prometheus")
        self.wait_scraped(len(replicas))

    def wait_scraped(self, n: int, timeout: float = 60) -> None:
        """Until Prometheus has scraped all n replicas once: a counter's first sample is its baseline, so
        traffic sent before it would never show in rate()."""
        deadline = time.monotonic() + timeout
        while len(self.query("up == 1")) < n:
            assert time.monotonic() < deadline, f"Prometheus scraped fewer than {n} replicas:\n{self.log('prometheus')}"
            time.sleep(0.3)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    # Prometheus ------------------------------------------------------------------------------------------
    def query(self, promql: str) -> list[dict]:
        r = httpx.get(f"{self.url('prometheus')}/api/v1/query", params={"query": promql}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
        return body["data"]["result"]


def wait_http(url: str, stack: Stack, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert stack.procs[name].poll() is None, f"{name} exited:\n{stack.log(name)}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{name} not up in {timeout} s:\n{stack.log(name)}"
        time.sleep(0.3)


def alert_quantity(expr: str) -> str:
    """What an alert compares, as a query that must return series on a healthy service: its thresholds
    dropped (`x > 0.05` -> `x`, on each side of a top-level `or`) and `unless` turned into `and` (the series
    that must match for it to stay quiet)."""
    expr = " ".join(expr.split())
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        for op in (" or ", " unless "):
            if depth == 0 and expr.startswith(op, i):
                parts.append((expr[start:i], op))
                start = i + len(op)
    parts.append((expr[start:], ""))
    threshold = re.compile(r"\s*(>|<|==|!=|>=|<=)\s*-?[0-9.]+\s*$")
    return "".join(threshold.sub("", p.strip()) + (" and " if op == " unless " else op) for p, op in parts)
