"""docker/compose.yaml's `scaleout` profile (two sipfilter instances on Redis Sentinel) agrees with itself,
with the lab and with sipfilter. No Docker engine here: the files are cross-checked, the instances' config is
loaded by sipfilter's own loader, promtool checks the profile's Prometheus config. The topology itself runs
with real processes in tests/e2e/test_failover.py.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sipfilter.configure import load_config
from sipfilter.stores.redis_url import redis_options

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
NODES = ("redis-a", "redis-b", "redis-c")
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
INSTANCES = ("sipfilter-a", "sipfilter-b")


def _yaml(name: str) -> Any:
    return yaml.safe_load((DOCKER / name).read_text())


def _ip(service: dict[str, Any]) -> str:
    return str(service["networks"]["sipnet"]["ipv4_address"])


def test_profile_services_and_the_default_stack() -> None:
    services = _yaml("compose.yaml")["services"]
    profile = {name for name, svc in services.items() if "scaleout" in svc.get("profiles", [])}
    assert profile == {*NODES, *SENTINELS, *INSTANCES, "provision-scaleout", "dialer-a", "dialer-b",
                       "prometheus-scaleout"}  # fmt: skip
    # `docker compose up` without the profile starts the lab exactly as before
    assert all("profiles" not in services[name] for name in ("redis", "sipfilter", "dialer", "prometheus"))
    ips = [_ip(svc) for svc in services.values() if isinstance(svc.get("networks"), dict)]
    assert len(ips) == len(set(ips))
    subnet = ipaddress.ip_network(_yaml("compose.yaml")["networks"]["sipnet"]["ipam"]["config"][0]["subnet"])
    assert all(ipaddress.ip_address(ip) in subnet for ip in ips)
    for name in (*INSTANCES, "provision-scaleout"):
        assert "./sipfilter-scaleout.yaml:/etc/sipfilter/sipfilter.yaml:ro" in services[name]["volumes"], name


def test_sentinels_watch_the_primary_its_replicas_follow() -> None:
    services = _yaml("compose.yaml")["services"]
    primary = _ip(services["redis-a"])
    for name in NODES:
        command = services[name]["command"]
        assert command[command.index("--appendonly") + 1] == "yes", name  # counters survive a restart
        if name != "redis-a":
            assert command[command.index("--replicaof") + 1:][:2] == [primary, "6379"], name
    for name in SENTINELS:
        script = services[name]["command"][-1]
        assert f"sentinel monitor sipfilter {primary} 6379 2" in script  # quorum 2 of 3
        assert script.rstrip().endswith("--sentinel")


def test_instances_use_the_sentinels_and_wait_for_a_replica(tmp_path: Path) -> None:
    services = _yaml("compose.yaml")["services"]
    scaleout, lab = _yaml("sipfilter-scaleout.yaml"), _yaml("sipfilter.yaml")
    url = scaleout["store"]["redis_url"]
    options = redis_options(url)
    assert (options.sentinel, options.replicas) == ("sipfilter", 1)
    hosts = urlsplit(url).netloc.split(",")
    assert hosts == [f"{_ip(services[name])}:26379" for name in SENTINELS]
    # Otherwise the lab's config, trunk for trunk (but the host names Prometheus scrapes the admin port by).
    assert scaleout["admin"].pop("allowed_hosts") == list(INSTANCES)
    del scaleout["store"], lab["store"], lab["admin"]["allowed_hosts"]
    assert scaleout == lab
    text = (DOCKER / "sipfilter-scaleout.yaml").read_text()
    (tmp_path / "sipfilter.yaml").write_text(text)
    shutil.copytree(ROOT / "config" / "rules", tmp_path / "rules")
    config = load_config(tmp_path / "sipfilter.yaml")
    assert config.store.backend == "redis" and config.store.redis_url == url


def test_each_dialer_calls_its_instance_from_the_trunk_sources() -> None:
    services = _yaml("compose.yaml")["services"]
    lab = _yaml("sipfilter-scaleout.yaml")
    sources = [ipaddress.ip_network(n) for n in lab["trunks"]["dialer"]["match"]["sources"]]
    for dialer, instance in (("dialer-a", "sipfilter-a"), ("dialer-b", "sipfilter-b")):
        command = services[dialer]["command"]
        assert command[0] == f"{instance}:{lab['sip']['inside'][0]['port']}"
        assert any(ipaddress.ip_address(command[command.index("-i") + 1]) in net for net in sources)
        assert services[dialer]["depends_on"][instance] == {"condition": "service_healthy"}


def test_prometheus_scrapes_both_instances(tmp_path: Path) -> None:
    prom = _yaml("prometheus-scaleout.yml")
    lab = _yaml("sipfilter-scaleout.yaml")
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "sipfilter"  # the lab's alerts select this job
    assert job["authorization"]["credentials"] == lab["admin"]["token"]
    assert job["static_configs"][0]["targets"] == [f"{name}:{lab['admin']['port']}" for name in INSTANCES]
    mounts = _yaml("compose.yaml")["services"]["prometheus-scaleout"]["volumes"]
    assert "./prometheus-scaleout.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert f"./alerts.yml:{prom['rule_files'][0]}:ro" in mounts
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed")
    shutil.copy(DOCKER / "alerts.yml", tmp_path / "alerts.yml")
    prom["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))
    done = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_header_says_how_to_run_it() -> None:
    header = (DOCKER / "compose.yaml").read_text().split("\nname:", 1)[0]
    assert re.search(r"docker compose --profile scaleout up", header)
    assert "Not run here" in header
