"""The Grafana dashboard's PromQL, ready for Prometheus' HTTP API.

Grafana fills in its variables before a query reaches Prometheus; the structural test and the live test
(every panel's query returns series on a running service) need the same queries without Grafana, so this
module substitutes the variables the way the dashboard's defaults would: every instance, a rate window of 4
scrapes. A variable it does not know raises, so a panel using a new variable cannot slip past the live test as
a query Prometheus rejects or that matches nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD: Path = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "llm2clip.json"

# what each variable evaluates to outside Grafana: the rate window Grafana picks at a 15 s scrape interval
# (4 scrapes), the scrape interval itself, and the `instance` variable's "All" value (its allValue)
SUBSTITUTIONS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "instance": ".+",
}

# $name, ${name} and ${name:format}; a `$` followed by a digit is a regex back-reference (label_replace), not
# a variable, and is left alone
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_]\w*)(?::[^}]*)?\}|([A-Za-z_]\w*))")


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included: a collapsed row keeps its panels under its own `panels`,
    and a check that read only the top level would miss them."""
    found: list[dict] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def substitute(expr: str) -> str:
    """``expr`` with Grafana's variables replaced by what Prometheus can evaluate; ValueError naming the first
    variable it does not know."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in SUBSTITUTIONS:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return SUBSTITUTIONS[name]

    return _VARIABLE.sub(replace, expr)


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(``"<panel title> [<refId>]"``, PromQL) for every target of every panel, variables substituted."""
    dashboard = json.loads(Path(path).read_text())
    queries = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            label = f"{panel.get('title', '?')} [{target.get('refId', '?')}]"
            queries.append((label, substitute(target.get("expr", ""))))
    return queries
