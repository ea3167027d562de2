"""A real Prometheus scrapes a real `sipfilter run`: freshly started, then while SIPp pushes calls through it.

Fresh: every series the dashboard and the alert rules read is there, at 0, for every configured trunk and
target, before the first call (and again after a restart). Under load, with a config reload and a list
import on the way: counters agree with what the dialer and the carrier saw, every dashboard expression
(annotations included) is valid and has data, and every alert stays quiet. It never edits the dashboard,
the rules or the harness.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_harness import Prometheus, start_prometheus, stop_process
from sipfilter_provision import Deployment, provision
from sipp_harness import (
    CallCase,
    Sipfilter,
    SipfilterPorts,
    SippFactory,
    free_ports,
    read_calls_csv,
    sipfilter_available,
    sipfilter_cli,
    sipfilter_config,
    write_calls_csv,
    write_config,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "metrics"))
from promql_names import dashboard_exprs, referenced_metrics  # noqa: E402

from sipfilter.metrics import CARRIER_CODE_LABELS  # noqa: E402

_MISSING = sipfilter_available()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(150),
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed"),
]

DOCKER = REPO / "docker"
POLICY_MIX = REPO / "sipp" / "csv" / "policy_mix.csv"
ROUNDS = 4  # policy_mix.csv (11 calls: 4 relayed, 7 refused by 7 different rules) played 4 times: 44 calls

# Dashboard expressions that may be empty: an annotation marks an event, and this run has none of its kind.
NO_SUCH_EVENT = {"annotation: Restarts": "no restart under load (the fresh-start test restarts sipfilter)"}
# Limits well above the load (20 calls/s, 44 calls): the capacity panels have values, no call is refused.
LIMITS = {"source_rate": 50, "source_burst": 90, "max_dialogs": 400,
          "trunks": {"dialer": {"max_dialogs": 200, "max_cps": 100}}}


def poll(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Bounded wait: `check` polled every 0.2 s until true, else fail saying `what`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"never true within {timeout_s}s: {what}")
        time.sleep(0.2)


def deploy_noc(workdir: Path, carrier_ports: list[int], *, monitor_trunk_ports: list[int] | None = None
               ) -> Deployment:  # fmt: skip
    """The e2e harness's config (trunk "dialer", carrier targets on `carrier_ports`) with LIMITS and, with
    `monitor_trunk_ports`, a second trunk "callback" in monitor mode; lists provisioned; sipfilter started."""
    ports = SipfilterPorts(*free_ports(3))
    config = sipfilter_config(workdir, ports, carrier_ports)
    config["limits"] = LIMITS
    if monitor_trunk_ports is not None:
        callback = dict(config["trunks"]["dialer"])
        targets = [{"uri": f"sip:127.0.0.1:{port}", "transport": "udp", "priority": 1, "weight": 1}
                   for port in monitor_trunk_ports]  # fmt: skip
        callback.update(match={"sources": ["10.9.0.0/16"]}, mode="monitor", targets=targets)
        config["trunks"]["callback"] = callback
    config_path = write_config(workdir / "sipfilter.yaml", config)
    provision(config_path, workdir)
    return Deployment(Sipfilter(config_path, ports, workdir / "run").start(), carrier_ports)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    dep = deploy_noc(tmp_path / "sf", free_ports(1))
    try:
        yield dep
    finally:
        dep.sipfilter.stop()


def prometheus_for(workdir: Path, deployment: Deployment) -> Prometheus:
    admin = yaml.safe_load(deployment.sipfilter.config_path.read_text())["admin"]
    return start_prometheus(workdir, f"{admin['host']}:{admin['port']}", admin.get("token"))


@pytest.fixture
def prometheus(tmp_path: Path, deployment: Deployment) -> Iterator[Prometheus]:
    prom = prometheus_for(tmp_path / "prometheus", deployment)
    try:
        yield prom
    finally:
        stop_process(prom.proc)


# Alerts that compare wall-clock latency with a threshold (1 ms p99 decision budget, 100 ms loop lag): on a
# shared 2-core box one descheduled decision out of 44 is the p99, so they may go pending, never firing
# within this run thanks to their `for:`; their expressions must still be valid. Every other alert must be
# silent: its expression empty now, and not even pending.
LOAD_DEPENDENT = {"SipfilterDecisionLatencyHigh", "SipfilterEventLoopLag"}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DOCKER / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_counters_dashboard_and_alerts_against_live_sipfilter(
        sipp: SippFactory, tmp_path: Path, deployment: Deployment, prometheus: Prometheus) -> None:
    prom = prometheus
    carrier = sipp("carrier_uas.xml", local_port=deployment.carrier_ports[0], calls=1_000_000, timeout_s=60)
    carrier.start().wait_listening()
    # The carrier answers sipfilter's OPTIONS probes: its target comes up before any call is placed.
    poll(lambda: prom.scalar('min(sipfilter_carrier_target_up{job="sipfilter"})') == 1.0,
         "carrier target up, scraped")
    assert prom.scalar('up{job="sipfilter"}') == 1.0

    cases: list[CallCase] = read_calls_csv(POLICY_MIX) * ROUNDS
    dialer = sipp("dialer_uac.xml", local_port=free_ports(1)[0], remote=deployment.inside, calls=len(cases),
                  csv_file=write_calls_csv(tmp_path / "calls.csv", cases), pause_ms=100, timeout_s=40,
                  rate=20).start()
    # Under load: a config reload (SIGHUP) and a new version of a list, as an operator would make them.
    config_path = deployment.sipfilter.config_path
    assert deployment.sipfilter.proc is not None
    os.kill(deployment.sipfilter.proc.pid, signal.SIGHUP)
    optouts = tmp_path / "optouts-v2.txt"
    optouts.write_text("+33612000101\n+33612000102\n", encoding="ascii")
    sipfilter_cli(["lists", "import", "--config", str(config_path), "--list", "optouts", "--format", "lines",
                   str(optouts)])  # fmt: skip
    run = dialer.wait()
    carrier_run = carrier.finish(grace_s=15)
    problems = [p for o in run.outcomes if (p := o.problem())]
    assert not problems and len(run.outcomes) == len(cases), "\n".join(problems) + "\n" + run.summary()

    # What the dialer saw: 200 = relayed (allow); anything else = refused, by the rule Reason names.
    relayed = sum(o.code == 200 for o in run.outcomes)
    refused = Counter(o.rule or "?" for o in run.outcomes if o.code != 200)
    assert relayed and refused and "?" not in refused, run.summary()
    assert carrier_run.invites == relayed, carrier_run.summary()
    n = len(cases)

    # (a) counters agree with SIPp, once a scrape after the last call reached Prometheus.
    poll(lambda: prom.scalar("sum(sipfilter_invites_received_total)") == n, f"{n} INVITEs scraped")
    poll(lambda: prom.scalar("sum(sipfilter_active_dialogs)") == 0.0, "active dialogs back to 0", 30)
    verdicts = prom.by_label("sum by (verdict) (sipfilter_decisions_total)", "verdict")
    assert {v: c for v, c in verdicts.items() if c} == {"allow": relayed, "reject": refused.total()}
    rules = prom.by_label('sum by (rule) (sipfilter_decisions_total{verdict="reject"})', "rule")
    assert {r: c for r, c in rules.items() if c} == {r: float(c) for r, c in refused.items()}
    assert prom.scalar("sum(sipfilter_calls_relayed_total)") == relayed
    assert prom.scalar("sum(sipfilter_calls_answered_total)") == relayed
    assert prom.scalar("sum(sipfilter_invites_received_total)") == n
    # The carrier's side: every relayed INVITE answered 200 by the one target, its latency observed.
    target = f"sip:127.0.0.1:{deployment.carrier_ports[0]}"
    codes = prom.by_label("sum by (code) (sipfilter_carrier_responses_total)", "code")
    assert {c: v for c, v in codes.items() if v} == {"200": relayed}
    assert set(codes) == set(CARRIER_CODE_LABELS)  # every code exported, the others at 0
    latency = f'sipfilter_carrier_invite_final_duration_seconds_count{{target="{target}"}}'
    assert prom.scalar(f"sum({latency})") == relayed
    assert prom.scalar('sum(sipfilter_config_reloads_total{result="ok"})') == 2  # the start, the SIGHUP
    assert prom.scalar('sipfilter_trunk_max_cps{trunk="dialer"}') == 100
    (info,) = prom.query("sipfilter_trunk_info")
    assert info["metric"]["mode"] == "enforce" and info["metric"]["rule_pack"] == "fr"
    (build,) = prom.query("sipfilter_build_info")
    compiled = "call path compiled" in (deployment.sipfilter.workdir / "sipfilter.log").read_text()
    assert build["metric"]["call_path"] == ("compiled" if compiled else "pure")

    # The new version of optouts (versions are one sequence over every list) in force and scraped.
    poll(lambda: bool(prom.query('changes(sipfilter_list_version{list="optouts"}[1m]) > 0')),
         "the list import scraped")
    assert prom.scalar('sipfilter_list_size{list="optouts"}') == 2

    # (b) every dashboard expression is valid and has data; annotations too, but for events of a kind this
    # run does not make.
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "sipfilter.json").read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) > 40
    missing: list[str] = []
    for title, expr in exprs:
        if not prom.query(expr) and title not in NO_SUCH_EVENT:
            absent = sorted(m for m in referenced_metrics(expr) if not prom.query(f"count({m})"))
            missing.append(f"{title}: {expr} (absent: {absent})")
    assert missing == [], "dashboard expressions without data:\n" + "\n".join(missing)

    # Alerts: every rule loaded and evaluated without error after the calls; none firing; the others
    # than LOAD_DEPENDENT quiet in the strong sense (expression empty now, so not even pending: `for:`
    # would otherwise hide a rule that is about to fire).
    evaluated_after = time.time()

    def rules_evaluated() -> bool:
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        return len(loaded) == len(alert_rules()) and all(
            r["health"] == "ok" and _ts(r.get("lastEvaluation")) > evaluated_after for r in loaded)

    poll(rules_evaluated, "every rule evaluated without error after the calls")
    for rule in alert_rules():
        result = prom.query(rule["expr"])  # also proves the expression is valid PromQL
        if "alert" in rule:
            assert result == [] or rule["alert"] in LOAD_DEPENDENT, (rule["alert"], result)
        else:
            assert result, f"recording rule {rule['record']} has no data after {n} calls"
    alerts = prom.get("/api/v1/alerts")["data"]["alerts"]
    states = [(a["labels"]["alertname"], a["state"]) for a in alerts]
    assert [(name, state) for name, state in states if state == "firing" or name not in LOAD_DEPENDENT] == []
    p99 = prom.scalar("max(trunk:sipfilter_decision_duration_seconds:p99_5m)")
    print(f"load-dependent alerts: {states or 'none active'} (decision p99 as Prometheus sees it: {p99})")
    assert deployment.sipfilter.alive(), deployment.sipfilter.log_tail()


def series_the_noc_reads() -> set[str]:
    """Every series name a dashboard expression (annotations included) or an alert rule reads, but the ones
    Prometheus makes itself (`up`, the recording rules)."""
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "sipfilter.json").read_text())
    names = {m for _title, expr in dashboard_exprs(dashboard) for m in referenced_metrics(expr)}
    rules = alert_rules()
    names |= {m for rule in rules for m in referenced_metrics(rule["expr"])}
    return names - {"up"} - {rule["record"] for rule in rules if "record" in rule}


def check_fresh(sf: Sipfilter, targets: dict[str, set[str]]) -> list[str]:
    """What is wrong with a sipfilter that has handled no call: a series the NOC reads absent, a configured
    trunk or target missing from a series labelled by them, or a counter or histogram that is not 0."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(sf.metrics()):
        for sample in fam.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    problems: list[str] = []
    for name in sorted(series_the_noc_reads()):
        got = samples.get(name, [])
        if not got:
            problems.append(f"{name}: absent")
            continue
        if any("trunk" in labels for labels, _ in got):
            missing = set(targets) - {labels.get("trunk") for labels, _ in got}
            problems += [f"{name}: no series for trunk {t}" for t in sorted(missing)]
        if any("target" in labels for labels, _ in got):
            for trunk, wanted in targets.items():
                seen = {labels["target"] for labels, _ in got if labels.get("trunk") == trunk}
                problems += [f"{name}: no series for {trunk}/{t}" for t in sorted(wanted - seen)]
        counted = name.endswith(("_total", "_bucket", "_count", "_sum")) or name == "sipfilter_active_dialogs"
        if counted and not name.startswith("process_"):
            for labels, v in got:
                # The config load at start counts as a (successful) reload.
                first_load = name == "sipfilter_config_reloads_total" and labels == {"result": "ok"}
                if v != (1.0 if first_load else 0.0):
                    problems.append(f"{name}{labels} = {v}, not 0")
    return problems


def test_fresh_sipfilter_exports_every_series_the_noc_reads_at_0(sipp: SippFactory, tmp_path: Path) -> None:
    """Two trunks (one in monitor mode), three carrier targets answering probes, no call: every series the
    dashboard and the alerts read is there, at 0, per trunk and per target; every panel has data (0 or NaN,
    never "No data"). After a restart the same holds, and the dashboard's restart annotation has data."""
    ports = free_ports(3)
    for port in ports:  # carriers that answer the OPTIONS probes: no retransmission, targets up
        sipp("carrier_uas.xml", local_port=port, calls=1_000_000, timeout_s=120).start().wait_listening()
    dep = deploy_noc(tmp_path / "sf", ports[:2], monitor_trunk_ports=ports[2:])
    targets = {"dialer": {f"sip:127.0.0.1:{p}" for p in ports[:2]}, "callback": {f"sip:127.0.0.1:{ports[2]}"}}
    prom: Prometheus | None = None
    try:
        assert check_fresh(dep.sipfilter, targets) == []
        prom = prometheus_for(tmp_path / "prometheus", dep)
        # rate() over the panels' 1 m window needs two scrapes of each series.
        poll(lambda: (prom.scalar('count_over_time(up{job="sipfilter"}[1m])') or 0) >= 3, "three scrapes")
        dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "sipfilter.json").read_text())
        exprs = dashboard_exprs(dashboard)
        empty = [f"{title}: {expr}" for title, expr in exprs
                 if not title.startswith("annotation:") and not prom.query(expr)]  # fmt: skip
        assert empty == [], "panels without data before the first call:\n" + "\n".join(empty)
        assert prom.query('sipfilter_trunk_info{trunk="callback",mode="monitor"}')

        dep.sipfilter.stop()
        dep.sipfilter.start()
        assert check_fresh(dep.sipfilter, targets) == []
        (restarts,) = [expr for title, expr in exprs if title == "annotation: Restarts"]
        poll(lambda: bool(prom.query(restarts)), "the restart annotation", timeout_s=30)
    finally:
        if prom is not None:
            stop_process(prom.proc)
        dep.sipfilter.stop()


def _ts(rfc3339: str | None) -> float:
    """Prometheus' lastEvaluation ("2026-11-29T07:01:02.123456789Z") as epoch seconds; 0 when never."""
    if not rfc3339 or rfc3339.startswith("0001-"):
        return 0.0
    head, _, frac = rfc3339.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or '0'}")
