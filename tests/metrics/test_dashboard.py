"""docker/grafana: the dashboard is Grafana 10 JSON; every panel query is valid PromQL over our series."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dashboard import DOCKER, load, panels, queries, substitute
from promql_names import referenced_metrics

from sipfilter import metrics

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def test_dashboard_shape() -> None:
    doc = load()
    assert doc["uid"] and doc["title"]
    assert doc["schemaVersion"] >= 36  # Grafana 10 and later
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    trunk = variables["trunk"]
    assert trunk["type"] == "query" and "sipfilter_invites_received_total" in str(trunk["query"])
    assert trunk["includeAll"] and trunk["multi"]
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(doc):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus", panel["title"]
            assert panel.get("targets"), panel["title"]
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel["title"]


def test_dashboard_covers_what_the_noc_asked_for() -> None:
    exprs = " ".join(q.expr for q in queries())
    for metric in (
        "sipfilter_invites_received_total", "sipfilter_decisions_total", "sipfilter_calls_answered_total",
        "sipfilter_active_dialogs", "sipfilter_decision_duration_seconds_bucket",
        "sipfilter_invite_final_duration_seconds_bucket", "sipfilter_list_age_seconds",
        "sipfilter_list_max_age_seconds", "sipfilter_store_up", "sipfilter_carrier_target_up",
        "sipfilter_malformed_messages_total", "sipfilter_unknown_source_requests_total",
    ):  # fmt: skip
        assert metric in exprs, metric


def test_panels_query_only_series_sipfilter_exports() -> None:
    known = metrics.metric_names()
    for q in queries():
        unknown = referenced_metrics(q.expr) - known
        assert not unknown, (q.panel, q.ref, unknown)


def test_unknown_series_are_caught() -> None:
    expr = substitute('rate(sipfilter_calls_total{trunk=~"$trunk"}[$__rate_interval])')
    assert referenced_metrics(expr) - metrics.metric_names() == {"sipfilter_calls_total"}


def _check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    cmd = ["promtool", "check", "rules", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _as_rules(exprs: list[str]) -> dict[str, object]:
    rules = [{"record": f"sipfilter_dashboard:panel_{i}", "expr": e} for i, e in enumerate(exprs)]
    return {"groups": [{"name": "dashboard", "rules": rules}]}


@needs_promtool
def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(_as_rules([q.expr for q in queries()])))
    done = _check_rules(path)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promql_check_rejects_a_broken_query(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(_as_rules(["sum by (trunk (rate(sipfilter_invites_received_total[1m]))"])))
    assert _check_rules(path).returncode != 0


def test_provisioning_points_at_the_dashboard_and_datasource() -> None:
    grafana = DOCKER / "grafana" / "provisioning"
    ds = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())
    assert [d["uid"] for d in ds["datasources"]] == ["prometheus"]
    boards = yaml.safe_load((grafana / "dashboards" / "sipfilter.yml").read_text())
    assert boards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    alerting = yaml.safe_load((grafana / "alerting" / "notifications.yml").read_text())
    assert alerting["policies"][0]["receiver"] == alerting["contactPoints"][0]["name"]
