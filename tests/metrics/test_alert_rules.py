"""docker/alerts.yml: valid for promtool, unit-tested (alerts_test.yml), reading only our own series."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql_names import referenced_metrics

from sipfilter import metrics

DOCKER = Path(__file__).resolve().parents[2] / "docker"
ALERTS = DOCKER / "alerts.yml"
ALERTS_TESTS = (DOCKER / "alerts_test.yml", DOCKER / "alerts_week_test.yml")
# Series Prometheus itself adds to every scrape target.
PROMETHEUS_SERIES = frozenset({"up"})

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=DOCKER)


@needs_promtool
def test_promtool_check_rules() -> None:
    done = _promtool("check", "rules", ALERTS.name)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    done = _promtool("test", "rules", *(t.name for t in ALERTS_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    # A rule file where the stale-list alert never fires must fail the unit tests: they test something.
    broken = ALERTS.read_text().replace(
        "sipfilter_list_age_seconds > on", "sipfilter_list_age_seconds > 1e12 * on"
    )
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(ALERTS_TESTS[0], tmp_path / "alerts_test.yml")
    done = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)  # fmt: skip
    assert done.returncode != 0 and "SipfilterListStale" in done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    fired: set[str] = set()
    quiet: set[str] = set()
    cases = [case for path in ALERTS_TESTS for case in yaml.safe_load(path.read_text())["tests"]]
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fired == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"


def test_every_alert_has_severity_and_text() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_rules_read_only_series_sipfilter_exports() -> None:
    known = metrics.metric_names() | recorded() | PROMETHEUS_SERIES
    for rule in rules():
        unknown = referenced_metrics(rule["expr"]) - known
        assert not unknown, (rule.get("alert") or rule.get("record"), unknown)


def test_scanner() -> None:
    expr = (
        'sum by (trunk) (rate(sipfilter_decisions_total{verdict=~"reject|x"}[5m] offset 1w)) '
        "/ on (trunk) group_left() max(up) > 1e-3 and bool trunk:sipfilter_blocked:ratio10m"
    )
    assert referenced_metrics(expr) == {"sipfilter_decisions_total", "up", "trunk:sipfilter_blocked:ratio10m"}
    assert referenced_metrics("sipfilter_nope_total + sipfilter_list_size") == {
        "sipfilter_nope_total", "sipfilter_list_size",
    }  # fmt: skip


def test_readme_documents_every_alert_and_only_real_metrics() -> None:
    readme = (DOCKER / "README.md").read_text()
    for rule in rules():
        if "alert" in rule:
            assert rule["alert"] in readme, rule["alert"]
    families = {fam.name for fam in metrics.REGISTRY.collect()}
    for name in set(re.findall(r"`(sipfilter_[a-z_]+)", readme)):
        assert name in metrics.metric_names() or name in families, name


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_has_a_runbook_in_operations_md() -> None:
    text = (DOCKER.parent / "docs" / "operations.md").read_text()
    runbooks = text[text.index("## Runbooks") :]
    anchors = {_anchor(h) for h in re.findall(r"^#{2,3} (.+)$", text, flags=re.MULTILINE)}
    linked: dict[str, str] = {}
    row = re.compile(r"^\| (`Sipfilter.*?) \| \[[^\]]+\]\(#([^)]+)\) \|$", re.MULTILINE)
    for alerts, anchor in row.findall(runbooks):
        assert anchor in anchors, anchor
        for name in re.findall(r"`(Sipfilter\w+)`", alerts):
            linked[name] = anchor
    assert {r["alert"] for r in rules() if "alert" in r} == set(linked)
