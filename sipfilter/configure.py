"""Load the running configuration: config/sipfilter.yaml read by sipfilter.config, then each part that another
package owns compiled by that package from the same located data, so that every error names file:line:field.

- rule packs and each trunk's rule set: sipfilter.policy.rulepack
- `limits:`: sipfilter.b2bua.limits
- a trunk's `identity:` (STIR/SHAKEN): sipfilter.identity.settings
- TLS contexts of listeners and carrier targets: sipfilter.transport.stream
- `store.redis_url`'s own parameters: sipfilter.stores.redis_url

Reads files, never opens sockets or stores. A reload builds a whole new Config or raises ConfigError, so the
running process keeps its last good one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from sipfilter.b2bua.limits import read_limits
from sipfilter.b2bua.trunks import destination_of
from sipfilter.config import (
    Config,
    Listen,
    Section,
    SipConfig,
    StoreConfig,
    Target,
    TargetTls,
    TrunkConfig,
    load_yaml,
)
from sipfilter.config.sections import (
    ROOT_KEYS,
    read_admin,
    read_audit,
    read_auth,
    read_logging,
    read_sip,
    read_store,
    read_trunk,
)
from sipfilter.policy.rulepack import RulePack, RuleSet, compile_rules, load_rule_pack
from sipfilter.stores.redis_url import redis_options
from sipfilter.transport.stream import TlsSetupError, tls_client_context, tls_server_context

if TYPE_CHECKING:
    from sipfilter.identity.settings import IdentityConfig


def load_config(path: str | Path) -> Config:
    """Read, validate and compile the configuration and its rule packs; raises ConfigError."""
    path = Path(path).resolve()
    root = Section(load_yaml(path), "")
    root.only(ROOT_KEYS)
    packs_s = root.section("rule_packs")
    packs: dict[str, RulePack] = {}
    for name in packs_s.data:
        packs[str(name)] = load_rule_pack(
            packs_s.path_(str(name)), name=str(name), where=(packs_s.file, packs_s.line_of(str(name)))
        )
    if not packs:
        raise root.error("rule_packs", "at least one rule pack is required")
    trunks_s = root.section("trunks")
    trunks: dict[str, TrunkConfig] = {}
    rules: dict[str, RuleSet] = {}
    tls_seen: dict[tuple[str, int], TargetTls] = {}
    for name in trunks_s.data:
        trunk_s = trunks_s.section(str(name))
        trunk = _trunk(trunk_s, read_trunk(str(name), trunk_s, packs), tls_seen)
        trunks[trunk.name] = trunk
        rules[trunk.name] = compile_rules(packs[trunk.rule_pack], trunk)
    if not trunks:
        raise root.error("trunks", "at least one trunk is required")
    return Config(
        path=path,
        sip=_sip(root.section("sip")),
        admin=read_admin(root.section("admin", default_empty=True)),
        store=_store(root.section("store", default_empty=True)),
        audit=read_audit(root.section("audit")),
        logging=read_logging(root.section("logging", default_empty=True)),
        rule_packs=MappingProxyType(packs),
        trunks=MappingProxyType(trunks),
        rules=MappingProxyType(rules),
        limits=read_limits(root.section("limits"), trunks) if root.has("limits") else None,
        auth=read_auth(root.section("auth"), trunks) if root.has("auth") else None,
    )


def reload_config(current: Config) -> Config:
    """Re-read the file `current` came from; on ConfigError the caller keeps running with `current`."""
    return load_config(current.path)


def _sip(s: Section) -> SipConfig:
    """`sip:`, each TLS listener with its server context built now, so that `config check` and a reload name
    a bad certificate file rather than the start-up."""
    sip = read_sip(s)
    inside = tuple(_listen_tls(x, listen) for x, listen in zip(s.items("inside"), sip.inside, strict=True))
    outside = tuple(_listen_tls(x, listen) for x, listen in zip(s.items("outside"), sip.outside, strict=True))
    return dataclasses.replace(sip, inside=inside, outside=outside)


def _listen_tls(s: Section, listen: Listen) -> Listen:
    if listen.transport != "tls":
        return listen
    assert listen.cert is not None and listen.key is not None
    client_ca = listen.client_ca
    try:
        context = tls_server_context(str(listen.cert), str(listen.key), str(client_ca) if client_ca else None)
    except TlsSetupError as exc:
        raise s.error(exc.part, f"{exc} ({client_ca if exc.part == 'client_ca' else listen.cert})") from exc
    return dataclasses.replace(listen, context=context)


def _store(s: Section) -> StoreConfig:
    store = read_store(s)
    try:
        redis_options(store.redis_url)
    except ValueError as exc:
        raise s.error("redis_url", str(exc)) from None
    return store


def _trunk(s: Section, trunk: TrunkConfig, tls_seen: dict[tuple[str, int], TargetTls]) -> TrunkConfig:
    """What the trunk's owners add: each TLS target's client context (built once per load, shared by every
    connection to it) and the STIR/SHAKEN settings (their files read now)."""
    targets = []
    for t, target in zip(s.items("targets"), trunk.targets, strict=True):
        if target.tls is not None:
            tls = _target_tls(t.section("tls", default_empty=True), target.tls)
            target = dataclasses.replace(target, tls=tls)
            _same_tls_per_address(t, target, tls_seen)
        targets.append(target)
    return dataclasses.replace(trunk, targets=tuple(targets), identity=_identity(s))


def _identity(trunk: Section) -> IdentityConfig | None:
    if not trunk.has("identity"):
        return None
    # Imported here, not for a cycle: STIR/SHAKEN loads cryptography's X.509, which every CLI command would
    # otherwise pay for at start-up whether or not a trunk signs or verifies.
    from sipfilter.identity.settings import read_identity

    return read_identity(trunk.section("identity"))


def _target_tls(s: Section, tls: TargetTls) -> TargetTls:
    try:
        context = tls_client_context(ca=str(tls.ca) if tls.ca else None, verify=tls.verify,
                                     min_version=tls.min_version, cert=str(tls.cert) if tls.cert else None,
                                     key=str(tls.key) if tls.key else None,
                                     crl=str(tls.crl) if tls.crl else None)  # fmt: skip
    except TlsSetupError as exc:
        raise s.error(exc.part if s.has(exc.part) else "ca", str(exc)) from exc
    return dataclasses.replace(tls, context=context)


def _same_tls_per_address(t: Section, target: Target, seen: dict[tuple[str, int], TargetTls]) -> None:
    """One connection serves an address, so every target at that host:port must verify it the same way."""
    assert target.tls is not None
    try:
        dest = destination_of(target)
    except ValueError as exc:
        raise t.error("uri", f"cannot read host and port: {exc}") from exc
    first = seen.setdefault(dest.addr, target.tls)
    if first != target.tls:
        raise t.error("tls", f"another target at {dest.host}:{dest.port} has different tls settings "
                             "(one connection serves both): make them identical")  # fmt: skip
