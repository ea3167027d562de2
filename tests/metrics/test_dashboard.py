"""Grafana dashboard and provisioning: valid PromQL (promtool), only series sipfilter exports, all topics."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql_names import dashboard_exprs, referenced_metrics, selectors

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
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert list(variables) == ["instance", "worker", "trunk"]
    for var in variables.values():
        assert var["type"] == "query" and var["includeAll"] and var["multi"] and var["allValue"] == ".*"
        metric = var["definition"].replace("label_values(", "").split(",")[0].split("{")[0]
        assert metric in metrics.metric_names(), var["name"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        covered = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                   for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "prometheus", panel["title"]


def _all_selectors() -> list[tuple[str, str, str, str]]:
    """(where, expr, metric, matchers) of every selector of every panel target and annotation, variables
    kept."""
    dash = dashboard()
    exprs = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [(a["name"], a["expr"]) for a in dash["annotations"]["list"] if "expr" in a]
    return [(where, expr, name, m) for where, expr in exprs for name, m in selectors(expr)]


def test_every_selector_follows_the_instance_and_worker_variables() -> None:
    found = _all_selectors()
    assert len(found) > 50
    for where, _expr, name, matchers in found:
        assert 'instance=~"$instance"' in matchers and 'worker=~"$worker"' in matchers, (where, name)


def test_trunk_variable_filters_every_per_trunk_series() -> None:
    # One trunk's series in the registry, so that every trunk-labelled family has a sample to show its labels.
    one = metrics.KnownLabels(trunks=("t",), transports=("udp",), rules={}, targets={"t": ("c",)})
    counters = metrics.CallCounters()
    metrics.expect_series(one, counters)
    trunk_labelled: set[str] = set()
    for fam in [*metrics.REGISTRY.collect(), *counters.collect()]:
        if "trunk" in _labels_of(fam):
            suffix = {"counter": "_total", "histogram": "_bucket"}.get(fam.type, "")
            trunk_labelled.add(fam.name + suffix)
    expected = {"sipfilter_invites_received_total", "sipfilter_carrier_responses_total",
                "sipfilter_request_uri_refused_total", "sipfilter_decision_duration_seconds_bucket",
                "sipfilter_carrier_invite_final_duration_seconds_bucket"}  # fmt: skip
    assert expected <= trunk_labelled
    for where, expr, name, matchers in _all_selectors():
        if "sipfilter_max_dialogs" in expr:
            continue  # the instance-wide cap: every trunk's dialogs against it, whatever $trunk says
        if name in trunk_labelled:
            assert 'trunk=~"$trunk"' in matchers, (where, name)


def _labels_of(fam: Any) -> set[str]:
    return {label for sample in fam.samples for label in sample.labels}


def test_scanner_finds_selectors_and_their_matchers() -> None:
    expr = ('sum by (trunk) (rate(sipfilter_decisions_total{trunk=~"$trunk",rule="a{b}"}[5m])) '
            "/ on (trunk) sipfilter_trunk_max_cps + time() - process_start_time_seconds{instance=~\"x\"}")
    assert selectors(expr) == [
        ("sipfilter_decisions_total", '{trunk=~"$trunk",rule="a{b}"}'),
        ("sipfilter_trunk_max_cps", ""),
        ("process_start_time_seconds", '{instance=~"x"}'),
    ]


def test_annotations_mark_restarts_reloads_and_list_imports() -> None:
    annotations = {a["name"]: a for a in dashboard()["annotations"]["list"] if "expr" in a}
    assert set(annotations) == {"Restarts", "Config reloads", "List imports"}
    assert "process_start_time_seconds" in annotations["Restarts"]["expr"]
    assert "sipfilter_config_reloads_total" in annotations["Config reloads"]["expr"]
    assert "sipfilter_list_version" in annotations["List imports"]["expr"]
    for annotation in annotations.values():
        assert annotation["enable"] and annotation["datasource"]["uid"] == "prometheus"


def test_list_size_and_version_are_on_separate_axes() -> None:
    (panel,) = [p for p in dashboard()["panels"] if p["title"] == "List size and version"]
    by_ref = {t["refId"]: t["expr"] for t in panel["targets"]}
    assert "sipfilter_list_size" in by_ref["A"] and "sipfilter_list_version" in by_ref["B"]
    (override,) = panel["fieldConfig"]["overrides"]
    assert override["matcher"] == {"id": "byFrameRefID", "options": "B"}
    assert {"id": "custom.axisPlacement", "value": "right"} in override["properties"]


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
        "sipfilter_trunk_info", "sipfilter_build_info", "sipfilter_trunk_max_dialogs",
        "sipfilter_max_dialogs", "sipfilter_trunk_max_cps", "sipfilter_carrier_responses_total",
        "sipfilter_list_present",
        "sipfilter_carrier_invite_final_duration_seconds_bucket", "process_start_time_seconds",
        "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds",
        "sipfilter_config_reloads_total", "sipfilter_list_version",
    }  # fmt: skip
    assert required - used == set()
    # Every series the dashboard can show is on it (a new metric needs a panel, or a reason here).
    not_on_dashboard = {
        "sipfilter_event_loop_lag_observed_seconds_bucket": "the histogram behind the lag gauge",
        "sipfilter_list_imported_timestamp_seconds": "the age panel shows it as an age",
    }
    exported = {n for n in known if not n.endswith(("_count", "_sum")) and n.startswith("sipfilter_")}
    assert exported - used - set(not_on_dashboard) == set()


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
