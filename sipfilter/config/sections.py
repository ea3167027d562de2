"""Readers of the plain sections of config/sipfilter.yaml (sip, admin, store, audit, logging, trunks, auth)
into the typed model; each refuses a value with its file, line and field.

The sections other packages own are read by them through the same `Section` (rule packs by policy.rulepack,
`limits:` by b2bua.limits, a trunk's `identity:` by identity.settings); sipfilter.configure puts it together.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from sipfilter.config.cpus import usable_cpus
from sipfilter.config.model import (
    MAX_WORKERS,
    TRANSPORTS,
    AdminConfig,
    AuditConfig,
    AuthConfig,
    DigestUserConfig,
    HeaderMatch,
    HeaderPolicy,
    Listen,
    LoggingConfig,
    SipConfig,
    SipLimits,
    SipTimers,
    StoreConfig,
    Target,
    TargetTls,
    TrunkConfig,
    TrunkLists,
    TrunkMatch,
)
from sipfilter.config.reader import ConfigError, Section, YamlMap

log = logging.getLogger(__name__)

# The top-level keys of config/sipfilter.yaml.
ROOT_KEYS = ("sip", "admin", "store", "audit", "logging", "rule_packs", "trunks", "limits", "auth")

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def read_listen(s: Section) -> Listen:
    """One `sip.inside`/`sip.outside` listener; a TLS listener's context is built by its owner (transport)."""
    s.only(["transport", "host", "port", "cert", "key", "client_ca"])
    transport = s.choice("transport", TRANSPORTS)
    host = s.str("host")
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise s.error("host", f"expected an IP address to bind, got {host!r}") from exc
    port = s.int("port", lo=0, hi=65535)
    cert = s.path_("cert") if s.has("cert") else None
    key = s.path_("key") if s.has("key") else None
    if transport == "tls" and (cert is None or key is None):
        raise s.error("transport", "tls listeners need `cert` and `key`")
    client_ca = s.path_("client_ca") if s.has("client_ca") else None
    if client_ca is not None and transport != "tls":
        raise s.error("client_ca", "client certificates need `transport: tls`")
    return Listen(transport, host, port, cert, key, client_ca)


def read_sip(s: Section) -> SipConfig:
    s.only(
        [
            "inside",
            "outside",
            "hostname",
            "limits",
            "timers",
            "ring_timeout_s",
            "max_call_duration_s",
            "drain_timeout_s",
            "probe_interval_s",
            "workers",
        ]
    )
    inside = tuple(read_listen(x) for x in s.items("inside"))
    outside = tuple(read_listen(x) for x in s.items("outside"))
    if not inside:
        raise s.error("inside", "at least one inside listener is required")
    if not outside:
        raise s.error("outside", "at least one outside listener is required")
    hostname = s.str("hostname")
    if not _HOSTNAME_RE.match(hostname):
        raise s.error("hostname", f"not a valid host name: {hostname!r}")
    lim = s.section("limits", default_empty=True)
    lim.only(["max_message_bytes", "max_headers", "max_line_bytes"])
    limits = SipLimits(
        lim.int("max_message_bytes", 65536, lo=1024, hi=16 * 1024 * 1024),
        lim.int("max_headers", 256, lo=8, hi=10000),
        lim.int("max_line_bytes", 8192, lo=256, hi=1024 * 1024),
    )
    tim = s.section("timers", default_empty=True)
    tim.only(["t1_ms", "t2_ms", "t4_ms"])
    timers = SipTimers(
        tim.int("t1_ms", 500, lo=1), tim.int("t2_ms", 4000, lo=1), tim.int("t4_ms", 5000, lo=1)
    )
    if timers.t2_ms < timers.t1_ms:
        raise tim.error("t2_ms", "must be >= t1_ms")
    return SipConfig(
        inside,
        outside,
        hostname,
        limits,
        timers,
        s.number("ring_timeout_s", 120, lo=1),
        s.number("max_call_duration_s", 14400, lo=1),
        s.number("drain_timeout_s", 30, lo=0),
        s.number("probe_interval_s", 10, lo=0.1),
        _workers(s, inside + outside),
    )


def _workers(s: Section, listens: tuple[Listen, ...]) -> int:
    """`sip.workers`: a count, or `auto` for one per core this process may use (config/cpus.py). Several
    workers need UDP-only listeners: a stream connection stays in the process that accepted it, and its
    calls would bypass the callee's owner."""
    if s.raw("workers", 1) == "auto":
        workers: int = min(usable_cpus(), MAX_WORKERS)
    else:
        workers = s.int("workers", 1, lo=1, hi=MAX_WORKERS)
    if workers > 1 and any(x.transport != "udp" for x in listens):
        raise s.error("workers", f"{workers} workers need UDP-only sip.inside and sip.outside listeners "
                                 "(a TCP or TLS connection stays in one worker): set workers: 1 to use them")
    return workers


ADMIN_TOKEN_MIN_BYTES = 32
# RFC 6750 b64token: what a `Bearer` credential may hold, so the token always fits in the header.
_ADMIN_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


def admin_token_problem(token: str) -> str | None:
    """Why `token` cannot be the admin token (too short, characters a Bearer header cannot carry); None if
    it can. Shared by the config loader and by whatever writes a token file."""
    if len(token.encode()) < ADMIN_TOKEN_MIN_BYTES:
        return f"the admin token must be at least {ADMIN_TOKEN_MIN_BYTES} bytes, got {len(token.encode())}"
    if not _ADMIN_TOKEN_RE.match(token):
        return "the admin token may hold letters, digits and - . _ ~ + / (then = padding) only"
    return None


def read_token_file(path: Path) -> str | None:
    """The token in `path` (first line, surrounding blanks stripped); None when the file does not exist.
    Raises ValueError naming the problem when it cannot be read or holds no usable token."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    lines = text.strip().splitlines()
    token = lines[0].strip() if lines else ""
    problem = admin_token_problem(token)
    if problem is not None:
        raise ValueError(f"{path}: {problem}")
    return token


def read_admin(s: Section) -> AdminConfig:
    s.only(["host", "port", "token", "token_file", "allowed_hosts"])
    host = s.str("host", "127.0.0.1")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError as exc:
        raise s.error("host", f"expected an IP address to bind, got {host!r}") from exc
    token = s.str("token", None, nullable=True)
    token_file = s.path_("token_file") if s.has("token_file") else None
    if token is not None and token_file is not None:
        raise s.error("token", "set `token` or `token_file`, not both")
    if token is not None:
        problem = admin_token_problem(token)
        if problem is not None:
            raise s.error("token", f"{problem} (e.g. `openssl rand -hex 32`)")
    elif token_file is not None:
        try:
            token = read_token_file(token_file)
        except ValueError as exc:
            raise s.error("token_file", str(exc)) from exc
    if not addr.is_loopback and token is None and token_file is None:
        raise s.error("token", f"a non-loopback admin bind ({host}) requires a token (`token_file`)")
    allowed = []
    for i, name in enumerate(s.str_list("allowed_hosts", None)):
        key = name.strip().lower().rstrip(".")
        if not _HOSTNAME_RE.match(key):
            raise s.item_error("allowed_hosts", i, f"expected a host name, got {name!r}")
        allowed.append(key)
    return AdminConfig(host, s.int("port", 9090, lo=0, hi=65535), token, token_file, tuple(allowed))


def read_store(s: Section) -> StoreConfig:
    s.only(["backend", "data_dir", "redis_url"])
    backend = s.choice("backend", ("embedded", "redis"), "embedded")
    redis_url = s.str("redis_url", "redis://127.0.0.1:6379/0")
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise s.error("redis_url", f"expected redis://, rediss:// or unix:// URL, got {redis_url!r}")
    return StoreConfig(backend, s.path_("data_dir", "var/data"), redis_url)


def read_audit(s: Section) -> AuditConfig:
    s.only(["path", "max_bytes", "backups", "on_write_error", "fsync", "compress", "retention_days"])
    return AuditConfig(
        s.path_("path", keep_link=True),
        s.int("max_bytes", 100 * 1024 * 1024, lo=4096),
        s.int("backups", None, lo=0, hi=1_000_000),
        s.choice("on_write_error", ("keep-relaying", "stop-relaying"), "keep-relaying"),
        s.choice("fsync", ("never", "rotate", "always"), "rotate"),
        s.choice("compress", ("gzip", "none"), "gzip"),
        # Three years and a margin: the administration's action for a fine under the consumer code lapses
        # after three full years (L522-2 code de la consommation) unless an act of inquiry interrupts it.
        s.int("retention_days", 1100, lo=1) if s.raw("retention_days", 1100) is not None else None,
    )


def read_logging(s: Section) -> LoggingConfig:
    s.only(["format", "level"])
    return LoggingConfig(
        s.choice("format", ("plain", "json"), "plain"),
        s.choice("level", ("debug", "info", "warning", "error"), "info"),
    )


_TRUNK_KEYS = (
    "match",
    "account",
    "rule_pack",
    "mode",
    "automated",
    "prospecting",
    "sector",
    "region",
    "lists",
    "on_store_error",
    "on_stale_list",
    "overrides",
    "targets",
    "headers",
    "request_uri",
    "on_targets_down",
    "identity",
    "purpose",
    "callee_zone_header",
    "objection_header",
)
_TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def read_trunk(name: str, s: Section, pack_names: Iterable[str]) -> TrunkConfig:
    """One trunk, without what other packages add to it (sipfilter.configure): the target TLS contexts and
    `identity:`."""
    s.only(_TRUNK_KEYS)
    if not _TOKEN_RE.match(name):
        raise ConfigError("trunk names are letters, digits, _ . : -", s.file, s.line, s.path)
    m = s.section("match")
    m.only(["sources", "ports", "header"])
    sources = []
    for i, src in enumerate(m.str_list("sources")):
        try:
            sources.append(ipaddress.ip_network(src, strict=False))
        except ValueError as exc:
            raise m.item_error("sources", i, f"not an address or CIDR: {src!r}") from exc
    header = None
    if m.has("header"):
        h = m.section("header")
        h.only(["name", "value"])
        header = HeaderMatch(h.str("name"), h.str("value"))
    if not sources:
        raise m.error("sources", "at least one source address or network is required")
    ports = []
    if m.has("ports"):
        for i, port in enumerate(m.list("ports", None)):
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise m.item_error("ports", i, f"not a port number (1-65535): {port!r}")
            ports.append(port)
    account = s.str("account")
    if not _TOKEN_RE.match(account):
        raise s.error("account", "letters, digits, _ . : - only")
    pack = s.str("rule_pack")
    if pack not in pack_names:
        raise s.error("rule_pack", f"no rule pack named {pack!r} in rule_packs")
    region = s.str("region", "FR")
    if not re.fullmatch(r"[A-Z]{2}", region):
        raise s.error("region", f"expected a 2-letter ISO region code, got {region!r}")
    lists_s = s.section("lists", default_empty=True)
    lists_s.only(["dnc", "authorised_caller_ids"])
    dnc = lists_s.str_list("dnc", None)
    auth_raw = lists_s.raw("authorised_caller_ids", None)
    auth: str | tuple[str, ...] | None
    if auth_raw is None or isinstance(auth_raw, str):
        auth = lists_s.str("authorised_caller_ids", None, nullable=True)
    else:
        auth = lists_s.str_list("authorised_caller_ids")
        for item in auth:
            if not re.fullmatch(r"\+\d{2,15}\*?", item):
                raise lists_s.error(
                    "authorised_caller_ids",
                    f"inline entries are E.164 numbers or prefixes ending in *, got {item!r}",
                )
    overrides = s.raw("overrides", None) or YamlMap()
    if not isinstance(overrides, Mapping):
        raise s.error("overrides", "expected a mapping of rule-pack values")
    targets = []
    for t in s.items("targets"):
        t.only(["uri", "transport", "priority", "weight", "tls"])
        uri = t.str("uri")
        if not uri.startswith(("sip:", "sips:")):
            raise t.error("uri", f"expected a sip: or sips: URI, got {uri!r}")
        transport = t.choice("transport", TRANSPORTS, "udp")
        targets.append(Target(uri, transport, t.int("priority", 1, lo=0), t.int("weight", 1, lo=0),
                              _target_tls(t, transport)))  # fmt: skip
    if not targets:
        raise s.error("targets", "at least one target is required")
    hs = s.section("headers", default_empty=True)
    hs.only(["pass"])
    headers = HeaderPolicy(hs.str_list("pass", ()))
    sector = s.str("sector", None, nullable=True)
    purpose = s.str("purpose", None, nullable=True)
    if purpose is not None and not _TOKEN_RE.match(purpose):
        raise s.error("purpose", "letters, digits, _ . : - only (the word contract scopes name)")
    return TrunkConfig(
        name=name,
        match=TrunkMatch(tuple(sources), header, frozenset(ports)),
        account=account,
        rule_pack=pack,
        mode=s.choice("mode", ("enforce", "monitor"), "enforce"),
        automated=s.bool("automated", True),
        prospecting=s.bool("prospecting", True),
        sector=sector,
        region=region,
        lists=TrunkLists(dnc, auth),
        on_store_error=s.choice("on_store_error", ("reject", "allow"), "reject"),
        on_stale_list=s.choice("on_stale_list", ("reject", "allow-and-alert"), "reject"),
        overrides=overrides,
        targets=tuple(targets),
        headers=headers,
        request_uri_domains=_request_uri_domains(s),
        on_targets_down=s.choice("on_targets_down", ("try", "reject"), "try"),
        purpose=purpose,
        callee_zone_header=_header_name(s, "callee_zone_header"),
        objection_header=_header_name(s, "objection_header"),
    )


_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # RFC 3261 token


def _header_name(s: Section, key: str) -> str | None:
    name: str | None = s.str(key, None, nullable=True)
    if name is not None and not _HEADER_NAME_RE.match(name):
        raise s.error(key, f"expected a SIP header name such as X-Sipfilter-Objection, got {name!r}")
    return name


def _target_tls(t: Section, transport: str) -> TargetTls | None:
    """`tls:` of one target (its client context is built by its owner, transport): errors name the field."""
    if transport != "tls":
        if t.has("tls"):
            raise t.error("tls", "tls settings need `transport: tls`")
        return None
    s = t.section("tls", default_empty=True)
    s.only(["ca", "server_name", "verify", "cert", "key", "min_version", "crl"])
    ca = s.path_("ca") if s.has("ca") else None
    server_name = s.str("server_name", None, nullable=True)
    if server_name is not None:
        host = server_name.lower().rstrip(".")
        if not _HOSTNAME_RE.match(host) and not _is_ip(host):
            raise s.error("server_name", f"expected a host name or IP address, got {server_name!r}")
    verify = s.bool("verify", True)
    cert = s.path_("cert") if s.has("cert") else None
    key = s.path_("key") if s.has("key") else None
    if (cert is None) != (key is None):
        raise s.error("cert" if cert is None else "key", "mutual TLS needs both `cert` and `key`")
    raw_version = s.raw("min_version", "1.2")
    # YAML reads an unquoted 1.2 as a float.
    version = f"{raw_version:.1f}" if isinstance(raw_version, float) else raw_version
    if version not in ("1.2", "1.3"):
        raise s.error("min_version", f"expected 1.2 or 1.3, got {raw_version!r}")
    crl = s.path_("crl") if s.has("crl") else None
    if crl is not None and not verify:
        raise s.error("crl", "a CRL needs certificate verification (`verify: true`)")
    for part, path in (("ca", ca), ("cert", cert), ("key", key), ("crl", crl)):
        if path is not None and not path.is_file():
            raise s.error(part, f"no such file: {path}")
    if not verify:
        uri = t.data.get("uri")
        log.warning("%s:%s: %s: TLS certificate verification is OFF for %s (tls.verify: false): anyone on "
                    "the path can impersonate this carrier", s.file, s.line, s.path, uri)  # fmt: skip
    return TargetTls(ca, server_name, verify, cert, key, version, crl)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _request_uri_domains(trunk: Section) -> frozenset[str] | None:
    """`request_uri: { domains: [...] }`: the Request-URI hosts a dialer may address on this trunk."""
    if not trunk.has("request_uri"):
        return None
    s = trunk.section("request_uri")
    s.only(["domains"])
    domains = s.str_list("domains")
    if not domains:
        raise s.error("domains", "list at least one domain (or remove request_uri to accept any host)")
    out = set()
    for i, raw in enumerate(domains):
        host = raw.strip().lower().rstrip(".")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _HOSTNAME_RE.match(host):
                raise s.item_error("domains", i, f"expected a host name or IP address, got {raw!r}") from None
        out.add(host)
    return frozenset(out)


_ALGORITHMS = ("SHA-256", "SHA-512-256", "MD5", "SHA-256-sess", "SHA-512-256-sess", "MD5-sess")


def read_auth(s: Section, trunks: Mapping[str, TrunkConfig]) -> AuthConfig:
    s.only(
        [
            "trunks",
            "realm",
            "algorithms",
            "challenge",
            "nonce_secrets_file",
            "nonce_ttl_s",
            "bind_nonce_to_source",
            "users",
        ]
    )
    names = s.str_list("trunks")
    for i, name in enumerate(names):
        if name not in trunks:
            raise s.item_error("trunks", i, f"no trunk named {name!r}")
    algorithms = s.str_list("algorithms", ("SHA-256", "MD5"))
    for i, alg in enumerate(algorithms):
        if alg not in _ALGORITHMS:
            raise s.item_error("algorithms", i, f"expected one of {', '.join(_ALGORITHMS)}, got {alg!r}")
    users = []
    for u in s.items("users"):
        u.only(["username", "ha1"])
        h = u.section("ha1")
        ha1: dict[str, str] = {}
        for alg in h.data:
            value = h.str(str(alg))
            if str(alg) not in _ALGORITHMS:
                raise h.error(str(alg), f"unknown algorithm {alg!r}")
            if not re.fullmatch(r"[0-9a-fA-F]{32,128}", value):
                raise h.error(str(alg), "expected the hex digest H(username:realm:password)")
            ha1[str(alg)] = value.lower()
        users.append(DigestUserConfig(u.str("username"), MappingProxyType(ha1)))
    return AuthConfig(
        trunks=names,
        realm=s.str("realm"),
        algorithms=algorithms,
        challenge=s.choice("challenge", ("proxy", "www"), "proxy"),
        nonce_secrets_file=s.path_("nonce_secrets_file"),
        nonce_ttl_s=s.int("nonce_ttl_s", 300, lo=1),
        bind_nonce_to_source=s.bool("bind_nonce_to_source", True),
        users=tuple(users),
    )
