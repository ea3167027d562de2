"""The smallest valid configuration loads, and so does the smallest valid form of every section.

Each case adds one section (or one trunk key) in its smallest valid form to the smallest whole config and
checks the defaults that fill in the rest: a key a user leaves out must never make a valid config fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sipfilter.config import ConfigError
from sipfilter.configure import load_config

PACK = Path(__file__).resolve().parents[1] / "config" / "rules" / "fr.yaml"


def smallest(tmp_path: Path) -> dict[str, Any]:
    """Only the required keys: one listener per side, a host name, an audit path, a pack, one trunk."""
    return {
        "sip": {
            "inside": [{"transport": "udp", "host": "127.0.0.1", "port": 5060}],
            "outside": [{"transport": "udp", "host": "127.0.0.1", "port": 5080}],
            "hostname": "sipfilter.local",
        },
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "rule_packs": {"fr": str(PACK)},
        "trunks": {
            "dialer": {
                "match": {"sources": ["10.0.0.0/24"]},
                "account": "acme",
                "rule_pack": "fr",
                "targets": [{"uri": "sip:10.0.1.1:5060"}],
            }
        },
    }


def load(tmp_path: Path, data: dict[str, Any]) -> Any:
    path = tmp_path / "sipfilter.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_config(path)


def test_a_trunk_with_only_the_required_keys_loads_with_safe_defaults(tmp_path: Path) -> None:
    c = load(tmp_path, smallest(tmp_path))
    t = c.trunks["dialer"]
    assert (t.mode, t.automated, t.prospecting, t.region, t.sector) == ("enforce", True, True, "FR", None)
    assert (t.on_store_error, t.on_stale_list, t.on_targets_down) == ("reject", "reject", "try")
    assert t.lists.dnc == () and t.lists.authorised_caller_ids is None
    assert t.headers.pass_ == ()  # nothing crosses to the carrier unless listed
    assert t.request_uri_domains is None and dict(t.overrides) == {}
    targets = [(x.uri, x.transport, x.priority, x.weight) for x in t.targets]
    assert targets == [("sip:10.0.1.1:5060", "udp", 1, 1)]
    assert c.rules["dialer"].frequency.cap == 4  # the pack's values, untouched
    # The optional sections' defaults.
    assert (c.admin.host, c.admin.port, c.admin.token) == ("127.0.0.1", 9090, None)
    assert c.store.backend == "embedded"
    assert (c.logging.format, c.logging.level) == ("plain", "info")
    assert (c.audit.on_write_error, c.audit.fsync) == ("keep-relaying", "rotate")
    assert c.sip.timers.t1_ms == 500 and c.sip.limits.max_message_bytes == 65536
    assert c.limits is None and c.auth is None


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("trunks.dialer.headers", {}),
        ("trunks.dialer.headers", None),
        ("trunks.dialer.headers", {"pass": []}),
        ("trunks.dialer.headers", {"pass": None}),
        ("trunks.dialer.lists", {}),
        ("trunks.dialer.lists", {"dnc": []}),
        ("trunks.dialer.overrides", {}),
        ("trunks.dialer.overrides", None),
        ("trunks.dialer.match.ports", []),
        ("trunks.dialer.request_uri", None),
        ("sip.limits", {}),
        ("sip.timers", {}),
        ("admin", {}),
        ("admin", None),
        ("store", {}),
        ("store", None),
        ("logging", {}),
        ("logging", None),
        ("limits", {}),
        ("limits", None),
        ("limits", {"trunks": {}}),
        ("limits", {"trunks": {"dialer": {}}}),
        ("limits", {"default_trunk": {}}),
    ],
)
def test_the_smallest_form_of_each_optional_part_loads(tmp_path: Path, where: str, value: Any) -> None:
    data = smallest(tmp_path)
    *parents, key = where.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[key] = value
    c = load(tmp_path, data)
    assert c.trunks["dialer"].headers.pass_ == ()


def test_smallest_auth_section(tmp_path: Path) -> None:
    data = smallest(tmp_path)
    data["auth"] = {"trunks": ["dialer"], "realm": "sipfilter.local",
                    "nonce_secrets_file": str(tmp_path / "nonce.keys"), "users": []}
    c = load(tmp_path, data)
    assert c.auth is not None and c.auth.algorithms == ("SHA-256", "MD5") and c.auth.challenge == "proxy"


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("trunks.dialer.match", "trunks.dialer.match"),
        ("trunks.dialer.account", "trunks.dialer.account"),
        ("trunks.dialer.rule_pack", "trunks.dialer.rule_pack"),
        ("trunks.dialer.targets", "trunks.dialer.targets"),
        ("sip.inside", "sip.inside"),
        ("sip.hostname", "sip.hostname"),
        ("audit.path", "audit.path"),
        ("audit", "audit"),
    ],
)
def test_each_required_key_is_named_when_missing(tmp_path: Path, where: str, field: str) -> None:
    data = smallest(tmp_path)
    *parents, key = where.split(".")
    node = data
    for part in parents:
        node = node[part]
    del node[key]
    with pytest.raises(ConfigError, match="missing required field") as err:
        load(tmp_path, data)
    assert err.value.field == field
