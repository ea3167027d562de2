"""Reads the provisioned Grafana dashboard and turns its panel queries into plain PromQL.

Shared by the dashboard tests and the live Prometheus test; no assertions here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCKER = Path(__file__).resolve().parents[2] / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "sipfilter.json"

# What Grafana substitutes before sending a query; any valid value will do for parsing and evaluating.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s", "$trunk": ".*"}


@dataclass(frozen=True, slots=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str  # with Grafana variables substituted


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in doc["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside a collapsed row
    return out


def substitute(expr: str) -> str:
    # Longest names first: $__range must not eat part of a longer variable.
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def queries(doc: dict[str, Any] | None = None) -> list[PanelQuery]:
    doc = load() if doc is None else doc
    return [
        PanelQuery(panel["title"], target.get("refId", "?"), substitute(target["expr"]))
        for panel in panels(doc)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
