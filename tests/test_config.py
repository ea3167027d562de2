"""The config model: the example validates; every kind of mistake names its file, line and field."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from sipfilter.config import ConfigError
from sipfilter.configure import load_config, reload_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "sipfilter.yaml"
PACK = ROOT / "config" / "rules" / "fr.yaml"


def test_example_config_loads() -> None:
    c = load_config(EXAMPLE)
    assert c.sip.hostname == "sipfilter.local"
    assert [(x.transport, x.port) for x in c.sip.inside] == [("udp", 5060), ("tcp", 5060)]
    assert c.sip.limits.max_headers == 256 and c.sip.timers.t1_ms == 500
    assert c.admin.host == "127.0.0.1" and c.admin.token_file == ROOT / "var" / "secrets" / "admin.token"
    assert c.store.backend == "embedded" and c.store.data_dir == (ROOT / "var" / "data").resolve()
    assert c.audit.path == (ROOT / "var" / "audit" / "decisions.jsonl").resolve()
    assert c.audit.on_write_error == "keep-relaying"
    t = c.trunks["dialer"]
    assert t.match.sources == (ipaddress.ip_network("127.0.0.0/8"),)
    assert (t.account, t.mode, t.automated, t.prospecting, t.region) == (
        "acme-energie",
        "enforce",
        True,
        True,
        "FR",
    )
    assert t.lists.dnc == ("bloctel", "optouts") and t.lists.authorised_caller_ids is None
    assert t.targets[0].uri == "sip:127.0.0.1:5070"
    assert "X-*" in t.headers.pass_
    assert c.rule_packs["fr"].version == "fr-2026.12-1"
    assert c.rules["dialer"].frequency.cap == 4


def write(tmp_path: Path, text: str, name: str = "sipfilter.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def example_with(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """The example config with one substitution; returns the path and the 1-based line of the change."""
    text = EXAMPLE.read_text().replace("rules/fr.yaml", str(PACK))
    assert old in text, old
    text = text.replace(old, new, 1)
    line = text[: text.index(new)].count("\n") + 1 + new[: len(new) - len(new.lstrip("\n"))].count("\n")
    return write(tmp_path, text), line


@pytest.mark.parametrize(
    ("old", "new", "field", "words"),
    [
        ("mode: enforce", "mode: enforcing", "trunks.dialer.mode", "expected one of enforce, monitor"),
        ("automated: true", "automated: yes please", "trunks.dialer.automated", "true or false"),
        ("account: acme-energie", "acount: acme-energie", "trunks.dialer.acount", "did you mean 'account'"),
        ("port: 9090", "port: 99999", "admin.port", "<= 65535"),
        ("backend: embedded", "backend: postgres", "store.backend", "embedded, redis"),
        ('sources: ["127.0.0.0/8"]', 'sources: ["127.0.0.300/8"]', "trunks.dialer.match.sources[0]", "CIDR"),
        (
            "# header: { name: X-Trunk, value: dialer }",
            "ports: [5060, 70000]",
            "trunks.dialer.match.ports[1]",
            "not a port number",
        ),
        ("rule_pack: fr", "rule_pack: de", "trunks.dialer.rule_pack", "no rule pack named 'de'"),
        ("on_store_error: reject", "on_store_error: maybe", "trunks.dialer.on_store_error", "reject, allow"),
        ("on_targets_down: try", "on_targets_down: later", "trunks.dialer.on_targets_down", "try, reject"),
        ("probe_interval_s: 10", "probe_interval_s: 0", "sip.probe_interval_s", ">= 0.1"),
        ("on_write_error: keep-relaying", "on_write_error: panic", "audit.on_write_error", "keep-relaying"),
        ("hostname: sipfilter.local", "hostname: 'bad host'", "sip.hostname", "not a valid host name"),
        ('uri: "sip:127.0.0.1:5070"', 'uri: "http://x"', "trunks.dialer.targets[0].uri", "sip: or sips:"),
        ("format: plain", "format: xml", "logging.format", "plain, json"),
        ("region: FR", "region: France", "trunks.dialer.region", "2-letter"),
        (
            "{ transport: tcp, host: 127.0.0.1, port: 5060 }",
            "{ transport: sctp, host: 127.0.0.1, port: 5060 }",
            "sip.inside[1].transport",
            "udp, tcp, tls",
        ),
        ("dnc: [bloctel, optouts]", "dnc: bloctel", "trunks.dialer.lists.dnc", "expected a list"),
        ("overrides: {}", "overrides: { frequency: { cap: 0 } }", "frequency.cap", ">= 1"),
        (
            "overrides: {}",
            "overrides: { hours: { weekly: { mon: ['10:00-25:00'] } } }",
            "hours.weekly.mon[0]",
            "not a valid time range",
        ),
        ("overrides: {}", "overrides: { nonsense: 1 }", "nonsense", "unknown field"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path: Path, old: str, new: str, field: str, words: str) -> None:
    path, line = example_with(tmp_path, old, new)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    e = err.value
    assert e.field == field, str(e)
    assert words in str(e)
    assert e.file == str(path)  # trunk overrides are reported in sipfilter.yaml, not in the pack
    assert e.line == line, str(e)
    assert str(e).startswith(f"{path}:{line}: {field}: ")


def test_public_admin_bind_needs_a_token(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("rules/fr.yaml", str(PACK))
    text = text.replace("token_file: ../var/secrets/admin.token", "token: null")
    path = write(tmp_path, text.replace("host: 127.0.0.1\n  port: 9090", "host: 0.0.0.0\n  port: 9090"))
    with pytest.raises(ConfigError, match="requires a token") as err:
        load_config(path)
    assert err.value.field == "admin.token"
    assert err.value.line == path.read_text().splitlines().index("  token: null") + 1


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "sip:\n  inside: [\n  hostname: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.file == str(path) and err.value.line is not None and "invalid YAML" in str(err.value)


def test_duplicate_key(tmp_path: Path) -> None:
    text = (
        EXAMPLE.read_text()
        .replace("rules/fr.yaml", str(PACK))
        .replace("  level: info\n", "  level: info\n  level: debug\n")
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="duplicate key 'level'") as err:
        load_config(path)
    assert err.value.line == text.splitlines().index("  level: debug") + 1


def test_unreadable_inputs(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"sip: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bin.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="missing required field"):
        load_config(write(tmp_path, ""))


def test_missing_file_and_missing_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="missing required field") as err:
        load_config(write(tmp_path, "trunks: {}\n"))
    assert err.value.field in ("rule_packs", "sip")


def test_rule_pack_errors_point_into_the_pack(tmp_path: Path) -> None:
    pack = PACK.read_text().replace("  cap: 4\n", "  cap: four\n")
    pack_path = write(tmp_path, pack, "fr.yaml")
    text = EXAMPLE.read_text()  # `rules/fr.yaml` relative to the config file: tmp_path/rules/fr.yaml
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "fr.yaml").write_text(pack)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert err.value.file == str(tmp_path / "rules" / "fr.yaml")
    assert err.value.field == "frequency.cap"
    assert err.value.line == pack.splitlines().index("  cap: four") + 1
    assert pack_path.exists()


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("version: fr-2026.12-1\n", "", "version"),
        ('"+33162", "+33163"', '"+33162", "33163"', "caller_id.categories.npv.prefixes[1]"),
        ('    "262": [RE]', '    "262": [XX]', "numbering.blocks"),
        ('    "+262692": [RE, YT]', '    "+262692": [RE, GP]', "numbering.also_in"),
        ("home_region: FR", "home_region: EU", "numbering.shared_plan"),
        ("[Indian/Reunion]", "[Indian/Atlantis]", "territories.RE.time_zones[0]"),
        ('local_days: ["12-20"]', 'local_days: ["20-12"]', "territories.RE.local_days[0]"),
        ('holidays: "974"', 'holidays: "99"', "territories.RE.holidays"),
        ("  RE: { time_zones", "  XX: { time_zones", "territories.RE"),
        (
            'short_prefixes: ["30", "31"]',
            'short_prefixes: ["+30", "31"]',
            "caller_id.categories.short-allowed.short_prefixes[0]",
        ),
        ("max_age_until: 2026-08-10", "max_age_until: 10/08/2026", "lists.bloctel.max_age_until"),
        (
            "professional-training: { contract_exempts: scoped }",
            "professional-training: { contract_exempts: maybe }",
            "sectors.banned.professional-training.contract_exempts",
        ),
        ("default_time_zone: Europe/Paris", "default_time_zone: Europe/Lutece", "hours.default_time_zone"),
        ('"+33387": "57"', '"+33387": "99"', "holidays.subdivisions.+33387"),
        ("required_from: 2026-08-11", "required_from: soon", "consent.required_from"),
        (
            'status: 603, text: "callee is on a do-not-call list"',
            'status: 200, text: "x"',
            "answers.callee.dnc.status",
        ),
        ("  frequency.cap: {", "  frequency.kap: {", "answers.frequency.kap"),
        ("rule: caller-id.mobile", "rule: caller-id.mobil", "caller_id.categories.mobile.rule"),
    ],
)
def test_rule_pack_validation(tmp_path: Path, old: str, new: str, field: str) -> None:
    pack = PACK.read_text()
    assert old in pack, old
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "fr.yaml").write_text(pack.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, EXAMPLE.read_text()))
    assert err.value.field == field, str(err.value)
    assert err.value.file == str(tmp_path / "rules" / "fr.yaml")
    assert err.value.line and err.value.line > 0


def test_missing_rule_pack_file(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="rule pack file not found") as err:
        load_config(path)
    assert err.value.line == text.splitlines().index("  fr: rules/fr.yaml") + 1


def test_reload_keeps_old_object_on_error(tmp_path: Path) -> None:
    path, _ = example_with(tmp_path, "mode: enforce", "mode: monitor")
    first = load_config(path)
    assert first.trunks["dialer"].mode == "monitor"
    path.write_text(path.read_text().replace("mode: monitor", "mode: enforce"))
    second = reload_config(first)
    assert second.trunks["dialer"].mode == "enforce" and second is not first
    path.write_text(path.read_text().replace("mode: enforce", "mode: bogus"))
    with pytest.raises(ConfigError):
        reload_config(second)
    assert second.trunks["dialer"].mode == "enforce"  # frozen: the running config is untouched


def test_config_is_immutable() -> None:
    c = load_config(EXAMPLE)
    with pytest.raises(AttributeError):
        c.trunks["dialer"].mode = "monitor"  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.trunks["x"] = c.trunks["dialer"]  # type: ignore[index]


def test_inline_authorised_caller_ids_and_tls(tmp_path: Path) -> None:
    path, _ = example_with(tmp_path, "authorised_caller_ids: null", 'authorised_caller_ids: ["+33162*", "x"]')
    with pytest.raises(ConfigError, match=r"E\.164 numbers or prefixes"):
        load_config(path)
    path, line = example_with(
        tmp_path,
        "{ transport: udp, host: 127.0.0.1, port: 5080 }",
        "{ transport: tls, host: 127.0.0.1, port: 5081 }",
    )
    with pytest.raises(ConfigError, match="cert") as err:
        load_config(path)
    assert err.value.line == line


def uncommented_proposals(tmp_path: Path) -> str:
    """The example with its proposed `limits:` and `auth:` sections uncommented."""
    lines = []
    active = False
    for line in EXAMPLE.read_text().replace("rules/fr.yaml", str(PACK)).splitlines():
        if line.startswith(("# limits:", "# auth:")):
            active = True
        if active and line.startswith("# ") and not line.startswith("# Digest"):
            line = line[2:]
        lines.append(line)
    text = "\n".join(lines) + "\n"
    return text.replace('SHA-256: "<H(user:realm:pass)>"', 'SHA-256: "' + "ab" * 32 + '"').replace(
        'MD5: "<H(user:realm:pass)>"', 'MD5: "' + "cd" * 16 + '"'
    )


def test_limits_and_auth_sections(tmp_path: Path) -> None:
    text = uncommented_proposals(tmp_path)
    if "\nlimits:" not in text:
        pytest.skip("the example config has no proposed limits section")
    c = load_config(write(tmp_path, text))
    assert c.limits is not None and c.limits.for_trunk("dialer").max_dialogs == 500
    assert c.auth is not None and c.auth.trunks == ("dialer",) and c.auth.challenge == "proxy"
    bad = text.replace("max_cps: 30", "max_cps: fast")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, bad))
    lines = bad.splitlines()
    assert err.value.line == lines.index(next(x for x in lines if "max_cps: fast" in x)) + 1
    bad = text.replace("trunks: [dialer]", "trunks: [dailer]")
    with pytest.raises(ConfigError, match="no trunk named 'dailer'") as err:
        load_config(write(tmp_path, bad))
    assert err.value.field == "auth.trunks[0]"


def test_match_ports_narrow_a_trunk(tmp_path: Path) -> None:
    path, _ = example_with(tmp_path, "# header: { name: X-Trunk, value: dialer }", "ports: [5062]")
    trunk = load_config(path).trunks["dialer"]
    assert trunk.match.ports == frozenset({5062})


def test_admin_token_is_at_least_32_bytes(tmp_path: Path) -> None:
    short = "s3cret-but-short-31-bytes-long!"[:31]
    path, line = example_with(tmp_path, "token_file: ../var/secrets/admin.token", f"token: {short}")
    with pytest.raises(ConfigError, match="at least 32 bytes, got 31") as err:
        load_config(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), line, "admin.token")
    path, _ = example_with(tmp_path, "token_file: ../var/secrets/admin.token", "token: " + "k" * 32)
    assert load_config(path).admin.token == "k" * 32
    spaced = 'token: "has space ' + "k" * 32 + '"'
    path, _ = example_with(tmp_path, "token_file: ../var/secrets/admin.token", spaced)
    with pytest.raises(ConfigError, match="letters, digits"):
        load_config(path)


def test_admin_token_file_is_read_and_checked(tmp_path: Path) -> None:
    secret = tmp_path / "admin.token"
    path, line = example_with(tmp_path, "token_file: ../var/secrets/admin.token", f"token_file: {secret}")
    assert load_config(path).admin.token is None  # not there yet: `sipfilter run` creates it
    secret.write_text("t" * 40 + "\n")
    config = load_config(path)
    assert config.admin.token == "t" * 40 and config.admin.token_file == secret
    secret.write_text("too-short\n")
    with pytest.raises(ConfigError, match=f"{secret}: the admin token must be at least 32 bytes") as err:
        load_config(path)
    assert (err.value.line, err.value.field) == (line, "admin.token_file")
    both, _ = example_with(tmp_path, "token_file: ../var/secrets/admin.token",
                           f"token_file: {secret}\n  token: {'k' * 32}")
    with pytest.raises(ConfigError, match="not both"):
        load_config(both)


def test_admin_allowed_hosts(tmp_path: Path) -> None:
    path, _ = example_with(tmp_path, "allowed_hosts: []", "allowed_hosts: [Admin.Example., sipfilter]")
    assert load_config(path).admin.allowed_hosts == ("admin.example", "sipfilter")
    path, line = example_with(tmp_path, "allowed_hosts: []", 'allowed_hosts: ["evil/path"]')
    with pytest.raises(ConfigError, match="expected a host name") as err:
        load_config(path)
    assert (err.value.line, err.value.field) == (line, "admin.allowed_hosts[0]")


def test_restart_required_names_the_keys(tmp_path: Path) -> None:
    from dataclasses import replace

    from sipfilter.config import RESTART_KEYS, restart_required

    config = load_config(EXAMPLE)
    assert restart_required(config, config) == []
    moved = replace(config, sip=replace(config.sip, inside=config.sip.inside[:1]),
                    store=replace(config.store, backend="redis"))  # fmt: skip
    assert restart_required(config, moved) == ["sip.inside", "store.backend"]
    assert set(restart_required(config, moved)) <= set(RESTART_KEYS)
