"""deploy/prometheus: the config and alert rules are valid for Prometheus, each alert fires on its case and not
on its neighbour (promtool's unit tests in rules_test.yml), and every series they read is one the service
exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    exe = shutil.which("promtool")
    assert exe, "promtool is not on PATH: scripts/setup.sh installs it (Debian package prometheus)"
    done = subprocess.run([exe, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_config_and_rules_are_valid():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 8 rules found" in promtool("check", "rules", "rules.yml")


def test_every_alert_fires_on_its_case_and_not_on_its_neighbour():
    assert "SUCCESS" in promtool("test", "rules", "rules_test.yml")
    tested = {t["alertname"] for case in yaml.safe_load((DEPLOY / "rules_test.yml").read_text())["tests"]
              for t in case["alert_rule_test"]}
    alerts = {r["alert"] for g in yaml.safe_load((DEPLOY / "rules.yml").read_text())["groups"] for r in g["rules"]}
    assert tested == alerts


def test_the_rules_read_series_the_service_exports():
    from prometheus_client import generate_latest

    from service.metrics import Metrics

    m = Metrics()
    # children exist once labelled: touch one of each so that every family shows its sample names
    m.http_requests.labels(route="/search", method="POST", status="200").inc()
    m.http_duration.labels(route="/search", method="POST").observe(0.1)
    m.rejected.labels(reason="overloaded").inc()
    m.index_info.labels(index="image", model_fingerprint="x", version="v").set(1)
    m.index_reloads.labels(index="image", result="refused").inc()
    m.model_info.labels(fingerprint="x", precision="fp32", backend="onnxruntime", device="cpu", version="0").set(1)
    exported = {line.split("{")[0].split(" ")[0] for line in generate_latest(m.registry).decode().splitlines()
                if line and not line.startswith("#")}
    rules = (DEPLOY / "rules.yml").read_text()
    used = set(re.findall(r"\bllm2clip_[a-z_]+", rules))
    assert used and used <= exported, sorted(used - exported)
