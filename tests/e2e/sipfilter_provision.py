"""Provision a test sipfilter's store through its own CLI: do-not-call lists and consents for the e2e CSVs.

Matches sipp/csv/policy_mix.csv and docs/sipp.md; goes through the CLI only, never the store files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipp_harness import (
    LOOPBACK,
    REPO,
    Sipfilter,
    SipfilterPorts,
    free_ports,
    sipfilter_cli,
    sipfilter_config,
    write_config,
)

ACCOUNT = "e2e-account"
# The provisioning docs/sipp.md and `sipfilter demo` use, shipped beside the CSV that assumes it.
SHIPPED = REPO / "sipp" / "csv"


def _numbers(path: Path) -> list[str]:
    """The numbers of a shipped provisioning file (one a line, or a CSV whose first column is `number`)."""
    lines = [line.split(",")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in lines if n and not n.startswith("#") and n != "number"]


CONSENTED = _numbers(SHIPPED / "consents-test.csv")
LISTS = {"bloctel": _numbers(SHIPPED / "bloctel-test.txt"), "optouts": _numbers(SHIPPED / "optouts-test.txt")}


def provision(config_path: Path, workdir: Path, *, extra_consents: list[str] | None = None,
              extra_lists: dict[str, list[str]] | None = None) -> None:
    """Import every list of LISTS (plus `extra_lists`) and record consent for CONSENTED (plus extras)."""
    lists = {name: list(numbers) for name, numbers in LISTS.items()}
    for name, numbers in (extra_lists or {}).items():
        lists.setdefault(name, []).extend(numbers)
    for name, numbers in lists.items():
        source = workdir / f"{name}.txt"
        source.write_text("\n".join(numbers) + "\n", encoding="ascii")
        sipfilter_cli(["lists", "import", "--config", str(config_path), "--list", name, "--format", "lines",
                       str(source)])
    consents = CONSENTED + (extra_consents or [])
    source = workdir / "consents.csv"
    source.write_text("\n".join(consents) + "\n", encoding="ascii")
    sipfilter_cli(["consent", "import", "--config", str(config_path), "--account", ACCOUNT, str(source)])


@dataclass
class Deployment:
    """A running sipfilter and the ports its carrier targets are configured on (priority order)."""

    sipfilter: Sipfilter
    carrier_ports: list[int]
    transport: str = "udp"  # the dialer transport a test exercises, when it exercises one

    @property
    def inside(self) -> str:
        return f"127.0.0.1:{self.sipfilter.ports.inside}"


def deploy(workdir: Path, carriers: int = 1, trunk: dict[str, Any] | None = None,
           sip: dict[str, Any] | None = None, extra_consents: list[str] | None = None,
           extra_lists: dict[str, list[str]] | None = None,
           store: dict[str, Any] | None = None, workers: int | str = 1) -> Deployment:
    """Config on free ports, lists and consents provisioned, `sipfilter run` started and ready.
    `store` replaces keys of the store section (e.g. a Redis backend and URL). `workers` > 1: that many
    worker processes (`auto`: one per usable core), on UDP-only listeners (what sip.workers requires).
    The caller stops it (`deployment.sipfilter.stop()`, in a finally or a fixture teardown)."""
    numbers = free_ports(3 + carriers)  # all distinct
    ports, carrier_ports = SipfilterPorts(*numbers[:3]), numbers[3:]
    if workers != 1:
        sip = {"inside": [{"transport": "udp", "host": LOOPBACK, "port": ports.inside}], **(sip or {}),
               "workers": workers}
    config = sipfilter_config(workdir, ports, carrier_ports, trunk=trunk, sip=sip)
    config["store"].update(store or {})
    config_path = write_config(workdir / "sipfilter.yaml", config)
    provision(config_path, workdir, extra_consents=extra_consents, extra_lists=extra_lists)
    return Deployment(Sipfilter(config_path, ports, workdir / "run").start(), carrier_ports)
