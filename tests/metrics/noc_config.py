"""A real config for the metrics tests: the B2BUA rig's trunk, a second trunk, a TCP listener and limits."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "b2bua"))
from b2bua_rig import CARRIER1, CARRIER2
from b2bua_rig import write_config as write_rig_config

from sipfilter.config import Config
from sipfilter.configure import load_config

TARGET1 = f"sip:{CARRIER1[0]}:{CARRIER1[1]}"
TARGET2 = f"sip:{CARRIER2[0]}:{CARRIER2[1]}"
TLS_TARGET = "sip:192.0.2.7:5061"
TARGETS = {"dialer": (TARGET1, TARGET2), "callback": (TLS_TARGET,)}


def noc_config(tmp_path: Path, *, extra_trunk: bool = True, limits: bool = True,
               healthy: bool = False) -> Config:  # fmt: skip
    """Trunk "dialer" (enforce, reads bloctel, two UDP targets) and, with `extra_trunk`, "callback" (one TLS
    target, reads bloctel and internal; unless `healthy`: monitor mode and a caller-ID list never imported).
    Limits: 300 dialogs in all, dialer 200 dialogs and 25 calls/s, other trunks 120 dialogs."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load(write_rig_config(tmp_path, lists={"dnc": ["bloctel"], "authorised_caller_ids": None})
                         .read_text())  # fmt: skip
    doc["sip"]["inside"].append({"transport": "tcp", "host": "127.0.0.1", "port": 5060})
    # A list with a max_age whatever today's date (the pack ends Bloctel's with its service, on 2026-08-10):
    # the list-age panels and alerts have something to show.
    doc["trunks"]["dialer"]["overrides"] = {"lists": {"bloctel": {"max_age_until": None}}}
    if extra_trunk:
        other = dict(doc["trunks"]["dialer"])
        other.update(match={"sources": ["10.9.0.0/16"]}, on_stale_list="allow-and-alert",
                     lists={"dnc": ["bloctel", "internal"], "authorised_caller_ids": None},
                     targets=[{"uri": TLS_TARGET, "transport": "tls", "priority": 1, "weight": 1}])
        if not healthy:
            other.update(mode="monitor",
                         lists={"dnc": ["bloctel", "internal"], "authorised_caller_ids": "our-numbers"})
        doc["trunks"]["callback"] = other
    if limits:
        doc["limits"] = {"source_rate": 10, "source_burst": 20, "max_dialogs": 300,
                         "default_trunk": {"max_dialogs": 120},
                         "trunks": {"dialer": {"max_dialogs": 200, "max_cps": 25}}}  # fmt: skip
    path = tmp_path / "noc.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path)
