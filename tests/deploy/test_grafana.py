"""deploy/grafana: the dashboard is one Grafana loads and lays out as written, every panel reads the
dashboard's own Prometheus variable and only series the service exports (filtered to the chosen instances),
and the provisioning files point Grafana at that Prometheus and at the folder the dashboard is mounted in.

Grafana itself is not installed here: the checks are structural. Each checker returns the problems it finds,
so that it can be shown to find one on a made-up bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from dashboard_queries import DASHBOARD, dashboard_queries, panels

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
PROVIDER_PATH = "/etc/grafana/dashboards"
DATASOURCE_VARIABLE = {"type": "prometheus", "uid": "${datasource}"}

# the series the service exports, as Prometheus names them (counters with _total, histograms in three parts)
EXPORTED = {
    "process_resident_memory_bytes", "process_cpu_seconds_total",
    "llm2clip_http_requests_total",
    *(f"{h}_{part}" for h in ("llm2clip_http_request_duration_seconds", "llm2clip_encode_seconds",
                              "llm2clip_encode_batch_size", "llm2clip_encode_batch_tokens",
                              "llm2clip_search_seconds")
      for part in ("bucket", "sum", "count")),
    "llm2clip_encoded_tokens_total", "llm2clip_queue_depth", "llm2clip_queue_tokens",
    "llm2clip_queue_tokens_limit", "llm2clip_query_cache_lookups_total", "llm2clip_query_cache_entries",
    "llm2clip_model_info", "llm2clip_index_items", "llm2clip_index_info", "llm2clip_ready",
    "llm2clip_rejected_requests_total",
}
_METRIC = re.compile(r"\b(?:llm2clip|process)_[a-z0-9_]*[a-z0-9]")
_SELECTOR = re.compile(r"\b((?:llm2clip|process)_[a-z0-9_]*[a-z0-9])\s*(\{[^}]*\})?")
_FILTERS = ('job="llm2clip"', 'instance=~"$instance"')


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _rect(panel: dict) -> tuple[int, int, int, int]:
    g = panel["gridPos"]
    return g["x"], g["y"], g["w"], g["h"]


def grid_problems(items: list[dict]) -> list[str]:
    """Panels outside the 24-column grid, rows not one unit high, and every pair of panels that overlap:
    Grafana silently pushes an overlapping panel down, so the layout on screen is not the one written."""
    problems = []
    for p in items:
        x, y, w, h = _rect(p)
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > 24:
            problems.append(f"{p.get('title')!r}: gridPos {p['gridPos']} outside the 24-column grid")
        if p.get("type") == "row" and h != 1:
            problems.append(f"row {p.get('title')!r}: h={h}, rows are 1 high")
    for i, a in enumerate(items):
        ax, ay, aw, ah = _rect(a)
        for b in items[i + 1:]:
            bx, by, bw, bh = _rect(b)
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                problems.append(f"{a.get('title')!r} overlaps {b.get('title')!r}")
    return problems


def unknown_metrics(exprs: list[str], known: set[str]) -> list[str]:
    """llm2clip_* / process_* names the queries read that the service does not export: such a panel stays
    empty forever (a typo, or a metric renamed in service/metrics.py)."""
    return sorted({name for e in exprs for name in _METRIC.findall(e)} - known)


def unfiltered_selectors(expr: str) -> list[str]:
    """Selectors of service metrics missing the job or instance filter: without them a panel ignores the
    instance picker, or mixes in another job's series of the same name."""
    return [f"{name}{sel or ''}" for name, sel in _SELECTOR.findall(expr)
            if not all(f in (sel or "") for f in _FILTERS)]


def panel_problems(panel: dict) -> list[str]:
    """What a non-row panel needs to be usable: a title, a description saying what it shows and what a bad
    value is, the dashboard's datasource variable, and targets each with a query, a unique refId and a legend."""
    title = panel.get("title")
    problems = [f"panel {panel.get('id')}: no {k}" for k in ("title", "description") if not panel.get(k)]
    if panel.get("datasource") != DATASOURCE_VARIABLE:
        problems.append(f"{title!r}: datasource {panel.get('datasource')}")
    targets = panel.get("targets") or []
    if not targets:
        problems.append(f"{title!r}: no targets")
    ref_ids = [t.get("refId") for t in targets]
    if len(set(ref_ids)) != len(ref_ids) or None in ref_ids:
        problems.append(f"{title!r}: refIds {ref_ids} missing or repeated")
    for t in targets:
        if t.get("datasource") != DATASOURCE_VARIABLE:
            problems.append(f"{title!r} [{t.get('refId')}]: datasource {t.get('datasource')}")
        if not str(t.get("expr", "")).strip() or "legendFormat" not in t:
            problems.append(f"{title!r} [{t.get('refId')}]: empty expr or no legendFormat")
    return problems


def _variable(dashboard: dict, name: str) -> dict:
    found = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    assert len(found) == 1, f"one templating variable {name!r} expected"
    return found[0]


def _family(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def _exprs(dashboard: dict) -> list[str]:
    return [t.get("expr", "") for p in panels(dashboard) for t in p.get("targets", [])]


def test_the_dashboard_identifies_itself(dashboard):
    assert dashboard["uid"] == "llm2clip"
    assert dashboard["title"] == "LLM2CLIP retrieval service"
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["refresh"] == "10s" and dashboard["time"]["from"] == "now-1h"
    assert dashboard["tags"]
    assert DASHBOARD.read_text() == json.dumps(dashboard, indent=2) + "\n", "keep the JSON pretty-printed"


def test_the_variables_pick_a_prometheus_and_its_instances(dashboard):
    ds = _variable(dashboard, "datasource")
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    instance = _variable(dashboard, "instance")
    assert instance["type"] == "query" and instance["datasource"] == DATASOURCE_VARIABLE
    assert "llm2clip_model_info" in str(instance["query"])
    assert instance["includeAll"] and instance["multi"] and instance["allValue"] == ".+"


def test_panel_ids_are_unique(dashboard):
    ids = [p.get("id") for p in panels(dashboard)]
    assert None not in ids and len(ids) == len(set(ids)), ids


def test_the_layout_fits_the_grid_without_overlaps(dashboard):
    assert grid_problems(dashboard["panels"]) == []
    for row in dashboard["panels"]:
        # a collapsed row's panels are laid out among themselves, below the row once it opens
        assert grid_problems(row.get("panels", [])) == []


def test_the_layout_check_finds_overlaps_and_overflow():
    bad = [{"title": "a", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}},
           {"title": "b", "gridPos": {"x": 6, "y": 4, "w": 12, "h": 8}},
           {"title": "c", "gridPos": {"x": 20, "y": 20, "w": 6, "h": 8}},
           {"title": "r", "type": "row", "gridPos": {"x": 0, "y": 30, "w": 24, "h": 2}},
           {"title": "d", "gridPos": {"x": 12, "y": 0, "w": 12, "h": 5}}]
    problems = grid_problems(bad)
    assert problems == ["'c': gridPos {'x': 20, 'y': 20, 'w': 6, 'h': 8} outside the 24-column grid",
                        "row 'r': h=2, rows are 1 high", "'a' overlaps 'b'", "'b' overlaps 'd'"]


def test_every_panel_is_described_and_reads_the_datasource_variable(dashboard):
    problems = [msg for p in panels(dashboard) if p.get("type") != "row" for msg in panel_problems(p)]
    assert problems == []


def test_the_panel_check_finds_a_fixed_datasource_and_repeated_refids():
    fixed = {"type": "prometheus", "uid": "prometheus"}
    bad = {"id": 1, "title": "t", "datasource": DATASOURCE_VARIABLE,
           "targets": [{"refId": "A", "expr": "up", "legendFormat": "", "datasource": fixed},
                       {"refId": "A", "expr": " ", "datasource": DATASOURCE_VARIABLE}]}
    assert panel_problems(bad) == ["panel 1: no description", "'t': refIds ['A', 'A'] missing or repeated",
                                   f"'t' [A]: datasource {fixed}", "'t' [A]: empty expr or no legendFormat"]


def test_every_service_selector_filters_job_and_instance(dashboard):
    problems = {e: unfiltered_selectors(e) for e in _exprs(dashboard)}
    assert {e: p for e, p in problems.items() if p} == {}
    assert unfiltered_selectors('rate(llm2clip_encoded_tokens_total{job="llm2clip"}[1m]) / process_x') == [
        'llm2clip_encoded_tokens_total{job="llm2clip"}', "process_x"]


def test_the_queries_read_only_exported_metrics(dashboard):
    exprs = _exprs(dashboard)
    assert unknown_metrics(exprs, EXPORTED) == []
    # and the other way round: no exported family without a panel (histograms count once, whichever part)
    used = {_family(name) for e in exprs for name in _METRIC.findall(e)}
    assert used == {_family(name) for name in EXPORTED}, "a panel for every exported family"
    assert unknown_metrics(['rate(llm2clip_encode_secs_count{job="x"}[1m])', "process_cpu_seconds_total"],
                           EXPORTED) == ["llm2clip_encode_secs_count"]


def test_the_exported_names_are_what_the_service_renders():
    from prometheus_client import generate_latest
    from prometheus_client.metrics import MetricWrapperBase

    from service.metrics import Metrics

    m = Metrics()
    # children exist once labelled: touch one of each labelled family so that every family shows its samples
    for metric in vars(m).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*("x" for _ in metric._labelnames))
    rendered = {line.split("{")[0].split(" ")[0] for line in generate_latest(m.registry).decode().splitlines()
                if line and not line.startswith("#")}
    assert EXPORTED <= rendered, sorted(EXPORTED - rendered)


def test_dashboard_queries_substitute_every_variable(dashboard):
    queries = dashboard_queries()
    assert len(queries) == len(_exprs(dashboard))
    assert len({label for label, _ in queries}) == len(queries), "labels name one target each"
    assert [(label, q) for label, q in queries if "$" in q] == []
    assert any("[1m]" in q for _, q in queries) and any('instance=~".+"' in q for _, q in queries)


def test_dashboard_queries_refuse_an_unknown_variable(tmp_path):
    made_up = {"panels": [{"type": "row", "title": "r", "panels": [{
        "title": "p", "targets": [{"refId": "A",
                                   "expr": 'rate(x{instance=~"${instance}", pod="$pod"}[$__rate_interval])'}]}]}]}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(made_up))
    with pytest.raises(ValueError, match=r"\$pod"):
        dashboard_queries(path)
    made_up["panels"][0]["panels"][0]["targets"][0]["expr"] = 'x{i=~"${instance:regex}"}[${__rate_interval}]'
    path.write_text(json.dumps(made_up))
    assert dashboard_queries(path) == [("p [A]", 'x{i=~".+"}[1m]')]


def test_the_provisioning_points_at_the_dashboard_and_its_prometheus(dashboard):
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert sources["apiVersion"] == 1
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True and source["editable"] is False and source["access"] == "proxy"
    assert _variable(dashboard, "datasource")["current"]["value"] == source["uid"] == "prometheus"

    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "llm2clip.yml").read_text())
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == PROVIDER_PATH
    assert provider["disableDeletion"] is True and provider["allowUiUpdates"] is False
    assert DASHBOARD.parent == GRAFANA / "dashboards"


def test_compose_mounts_the_dashboards_where_the_provider_reads():
    compose_file = ROOT / "docker-compose.yml"
    grafana = yaml.safe_load(compose_file.read_text())["services"]["grafana"]
    mounts = {v.removesuffix(":ro") for v in grafana["volumes"] if isinstance(v, str)}
    assert f"./deploy/grafana/dashboards:{PROVIDER_PATH}" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in mounts
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{PROVIDER_PATH}/{DASHBOARD.name}"
