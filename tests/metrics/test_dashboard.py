"""Grafana dashboard and provisioning: valid PromQL (promtool), only series sipfilter exports, all topics."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql_names import dashboard_exprs, referenced_metrics

from sipfilter import metrics

DOCKER = Path(__file__).resolve().parents[2] / "docker"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sipfilter.json"


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def test_dashboard_shape() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["schemaVersion"] >= 36  # Grafana 10+
    (trunk,) = [v for v in dash["templating"]["list"] if v["name"] == "trunk"]
    assert trunk["type"] == "query" and trunk["includeAll"] and trunk["multi"]
    assert referenced_metrics(trunk["definition"].replace("label_values(", "").split(",")[0]) <= (
        metrics.metric_names()
    )
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "prometheus", panel["title"]


def test_trunk_variable_filters_the_per_trunk_panels() -> None:
    trunk_labelled = {"sipfilter_invites_received_total", "sipfilter_decisions_total",
                      "sipfilter_active_dialogs", "sipfilter_calls_relayed_total"}  # fmt: skip
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            if referenced_metrics(target["expr"]) & trunk_labelled:
                assert 'trunk=~"$trunk"' in target["expr"], (panel["title"], target["expr"])


def test_panels_query_only_series_sipfilter_exports() -> None:
    known = metrics.metric_names()
    used: set[str] = set()
    for title, expr in dashboard_exprs(dashboard()):
        names = referenced_metrics(expr)
        assert names, (title, expr)
        assert names <= known, (title, names - known)
        used |= names
    # The topics the NOC asked for are all on the dashboard.
    required = {
        "sipfilter_invites_received_total", "sipfilter_decisions_total", "sipfilter_monitor_rejections_total",
        "sipfilter_calls_answered_total", "sipfilter_calls_relayed_total", "sipfilter_active_dialogs",
        "sipfilter_decision_duration_seconds_bucket", "sipfilter_invite_final_duration_seconds_bucket",
        "sipfilter_list_age_seconds", "sipfilter_list_max_age_seconds", "sipfilter_store_up",
        "sipfilter_store_errors_total", "sipfilter_carrier_target_up", "sipfilter_carrier_failovers_total",
        "sipfilter_malformed_messages_total", "sipfilter_unknown_source_requests_total",
    }  # fmt: skip
    assert required - used == set()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_panel_expression_is_valid_promql(tmp_path: Path) -> None:
    exprs = dashboard_exprs(dashboard())
    rules = [{"record": f"dashboard:expr_{i}", "expr": expr} for i, (_title, expr) in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _check_rules(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout
    # And a broken expression would be caught.
    broken = {"groups": [{"name": "d", "rules": [{"record": "x:y", "expr": "sum(("}]}]}
    path.write_text(yaml.safe_dump(broken))
    assert _check_rules(path).returncode != 0


def _check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    cmd = ["promtool", "check", "rules", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_provisioning_files() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (prom,) = ds["datasources"]
    assert prom["uid"] == "prometheus" and prom["type"] == "prometheus" and prom["url"].startswith("http://")
    dashboards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "sipfilter.yml").read_text())
    assert dashboards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    alerting = yaml.safe_load((GRAFANA / "provisioning" / "alerting" / "notifications.yml").read_text())
    receivers = {cp["name"] for cp in alerting["contactPoints"]}
    assert {p["receiver"] for p in alerting["policies"]} <= receivers
