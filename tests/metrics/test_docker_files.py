"""docker/: compose, Prometheus and sipfilter configs agree with each other and with the repository.

No Docker engine here: the files are parsed and cross-checked, the lab config is loaded by sipfilter's own
loader, the provisioning script runs against an embedded store, and promtool checks prometheus.yml.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipfilter.configure import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return doc


def lab_yaml() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCKER / "sipfilter.yaml").read_text())
    return doc


def prometheus_yaml() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    return doc


def test_compose_services_and_mounts_exist() -> None:
    services = compose()["services"]
    assert {"sipfilter", "redis", "prometheus", "grafana", "carrier", "dialer", "provision"} <= set(services)
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), (name, volume)
        for dep in svc.get("depends_on", []):
            assert dep in services, (name, dep)


def test_published_ports_stay_on_loopback() -> None:
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_dockerignore_keeps_what_the_image_copies() -> None:
    kept = {line[1:].rstrip("/") for line in (DOCKER / "Dockerfile.dockerignore").read_text().split()
            if line.startswith("!")}  # fmt: skip
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", (DOCKER / "Dockerfile").read_text(), re.M):
        for path in source.split():
            assert path.rstrip("/") in kept, path


def test_sipp_services_use_scenarios_that_exist() -> None:
    services = compose()["services"]
    mounts = {"/sipp": ROOT / "sipp", "/lab": DOCKER}
    for name in ("carrier", "dialer"):
        args = services[name]["command"]
        for flag in ("-sf", "-inf"):
            if flag in args:
                path = args[args.index(flag) + 1]
                top, rest = "/" + path.split("/")[1], path.split("/", 2)[2]
                assert (mounts[top] / rest).is_file(), (name, path)


def test_addresses_agree() -> None:
    services = compose()["services"]
    lab = lab_yaml()
    subnet = ipaddress.ip_network(compose()["networks"]["sipnet"]["ipam"]["config"][0]["subnet"])
    trunk = lab["trunks"]["dialer"]
    assert [str(subnet)] == trunk["match"]["sources"]
    carrier_ip = services["carrier"]["networks"]["sipnet"]["ipv4_address"]
    carrier_port = services["carrier"]["command"][services["carrier"]["command"].index("-p") + 1]
    assert trunk["targets"][0]["uri"] == f"sip:{carrier_ip}:{carrier_port}"
    dialer = services["dialer"]["command"]
    assert ipaddress.ip_address(dialer[dialer.index("-i") + 1]) in subnet
    assert dialer[0] == f"sipfilter:{lab['sip']['inside'][0]['port']}"
    assert lab["store"]["redis_url"].startswith("redis://redis:")


def test_prometheus_scrapes_sipfilter_with_its_token() -> None:
    prom = prometheus_yaml()
    lab = lab_yaml()
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "sipfilter"  # SipfilterDown selects up{job="sipfilter"}
    assert job["authorization"]["credentials"] == lab["admin"]["token"]
    assert job["static_configs"][0]["targets"] == [f"sipfilter:{lab['admin']['port']}"]
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert f"./alerts.yml:{prom['rule_files'][0]}:ro" in mounts
    grafana_ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert grafana_ds["datasources"][0]["url"] == "http://prometheus:9090"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_check_config(tmp_path: Path) -> None:
    prom = prometheus_yaml()
    shutil.copy(DOCKER / "alerts.yml", tmp_path / "alerts.yml")
    prom["rule_files"] = [str(tmp_path / "alerts.yml")]  # the container path does not exist here
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))
    done = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    port = lab_yaml()["admin"]["port"]
    assert re.search(rf"HEALTHCHECK .*\n?.*127\.0\.0\.1:{port}/healthz", text)
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    sipp = (DOCKER / "sipp.Dockerfile").read_text()
    assert "FROM debian:bookworm-slim" in sipp and "sip-tester" in sipp


def _lab_copy(tmp_path: Path, embedded: bool) -> Path:
    text = (DOCKER / "sipfilter.yaml").read_text()
    if embedded:
        text = text.replace("backend: redis", "backend: embedded")
        text = text.replace("/var/lib/sipfilter/", f"{tmp_path}/var/")
    (tmp_path / "sipfilter.yaml").write_text(text)
    shutil.copytree(ROOT / "config" / "rules", tmp_path / "rules")  # where the image puts them
    return tmp_path / "sipfilter.yaml"


def test_lab_config_loads(tmp_path: Path) -> None:
    config = load_config(_lab_copy(tmp_path, embedded=False))
    assert config.admin.token and config.store.backend == "redis"
    assert set(config.trunks) == {"dialer"}


def test_provision_script_imports_the_lab_lists(tmp_path: Path) -> None:
    path = _lab_copy(tmp_path, embedded=True)
    env = dict(os.environ, SIPFILTER_CONFIG=str(path))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(["sh", str(DOCKER / "provision.sh")], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bloctel" in done.stdout and "optouts" in done.stdout
