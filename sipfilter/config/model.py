"""The typed model of config/sipfilter.yaml: one frozen dataclass per section, and what a reload may change.

Plain data. The parts other packages compile (rule sets, limits, STIR/SHAKEN settings, TLS contexts) are
typed here by name only: config imports nothing of those packages at run time.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sipfilter.b2bua.limits import LimitsConfig
    from sipfilter.identity.settings import IdentityConfig
    from sipfilter.policy.rulepack import RulePack, RuleSet


# --------------------------------------------------------------------------------------------------
# The model. Field names follow config/sipfilter.yaml exactly (`pass` becomes `pass_`).

TRANSPORTS = ("udp", "tcp", "tls")
MAX_WORKERS = 256  # sip.workers; the tags and branches a worker makes carry its index (workers/routing.py)


@dataclass(frozen=True, slots=True)
class Listen:
    transport: str  # udp | tcp | tls
    host: str
    port: int
    cert: Path | None = None  # tls only
    key: Path | None = None  # tls only
    client_ca: Path | None = None  # tls only: mutual TLS, peers must show a certificate from these CAs
    # tls only: the server context, built when the config is loaded (file errors are config errors)
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def describe(self, port: int | None = None) -> str:
        """`tls 10.0.0.5:5061 (peers need a certificate from …)`, for the log and `config check`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        mutual = f" (peers need a certificate from {self.client_ca})" if self.client_ca else ""
        return f"{self.transport} {host}:{self.port if port is None else port}{mutual}"


@dataclass(frozen=True, slots=True)
class SipLimits:
    max_message_bytes: int = 65536
    max_headers: int = 256
    max_line_bytes: int = 8192


@dataclass(frozen=True, slots=True)
class SipTimers:
    t1_ms: int = 500
    t2_ms: int = 4000
    t4_ms: int = 5000


@dataclass(frozen=True, slots=True)
class SipConfig:
    inside: tuple[Listen, ...]
    outside: tuple[Listen, ...]
    hostname: str
    limits: SipLimits
    timers: SipTimers
    ring_timeout_s: float
    max_call_duration_s: float
    drain_timeout_s: float
    probe_interval_s: float = 10.0  # OPTIONS to every carrier target; a down target is retried this often
    workers: int = 1  # event-loop processes sharing the listeners (sipfilter/workers); 1: this process alone


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str
    port: int  # 0 = pick a free port (tests)
    token: str | None  # from `token`, or read from `token_file` when that file exists
    # `token_file`: where the token lives; `sipfilter run` creates it (random, mode 0600) when it is missing.
    token_file: Path | None = None
    # Host header names the admin port answers besides its bind address (a reverse proxy's, a service name).
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: str  # embedded | redis
    data_dir: Path
    redis_url: str


@dataclass(frozen=True, slots=True)
class AuditConfig:
    path: Path
    max_bytes: int
    backups: int | None  # rotated files kept at most (None: no count limit; 0: none kept)
    on_write_error: str  # keep-relaying | stop-relaying
    fsync: str = "rotate"  # never | rotate | always (see sipfilter/audit.py)
    compress: str = "gzip"  # gzip | none: rotated files
    retention_days: int | None = 1100  # rotated files older than this are removed (None: kept forever)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    format: str  # plain | json
    level: str  # debug | info | warning | error


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class TrunkMatch:
    sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    header: HeaderMatch | None = None
    ports: frozenset[int] = frozenset()  # source ports; empty = any port


@dataclass(frozen=True, slots=True)
class TrunkLists:
    dnc: tuple[str, ...]  # do-not-call list names checked for the callee
    # A store list name, or inline E.164 numbers/prefixes ("+33162*"); None = no restriction.
    authorised_caller_ids: str | tuple[str, ...] | None

    @property
    def store_lists(self) -> tuple[str, ...]:
        """Every list the trunk reads from the store: its do-not-call lists and a named caller-ID list."""
        named = self.authorised_caller_ids
        return (*self.dnc, named) if isinstance(named, str) else self.dnc


@dataclass(frozen=True, slots=True)
class TargetTls:
    """`tls:` of a `transport: tls` target: how the carrier's certificate is verified (and ours shown)."""

    ca: Path | None  # PEM CA bundle; None = the system's CAs
    server_name: str | None  # the name its certificate must carry; None = the target URI's host
    verify: bool  # false: no verification at all (logged as a warning at every load)
    cert: Path | None  # client certificate chain for mutual TLS (with key)
    key: Path | None
    min_version: str  # 1.2 | 1.3
    crl: Path | None = None  # PEM CRLs the carrier's certificate is checked against (re-read on SIGHUP)
    # Built once per config load from the fields above and shared by every connection to the target.
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Target:
    uri: str
    transport: str
    priority: int
    weight: int
    tls: TargetTls | None = None  # set for every `transport: tls` target (defaults when `tls:` is absent)


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    pass_: tuple[str, ...]  # `pass` in YAML; "X-*" style wildcards allowed


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    name: str
    match: TrunkMatch
    account: str
    rule_pack: str
    mode: str  # enforce | monitor
    automated: bool
    prospecting: bool
    sector: str | None
    region: str
    lists: TrunkLists
    on_store_error: str  # reject | allow
    on_stale_list: str  # reject | allow-and-alert
    overrides: Mapping[str, Any]
    targets: tuple[Target, ...]
    headers: HeaderPolicy
    # `request_uri.domains`, lower-cased hosts (IPv6 without brackets); None = any host, rewritten to the
    # carrier target (sipfilter/b2bua/trunks.py foreign_host).
    request_uri_domains: frozenset[str] | None = None
    # When every carrier target is marked down (probes, timeouts): `try` them anyway, last-known-good first
    # (a call is never refused on probe results alone), or `reject` at once with 503 + Retry-After.
    on_targets_down: str = "try"
    # STIR/SHAKEN `identity: {verify, sign}` (sipfilter/identity/settings.py); None: neither.
    identity: IdentityConfig | None = None
    # What this trunk's calls are about (e.g. energy-supply): a contract in progress exempts its callee (from
    # consent, Bloctel, a banned sector) only if the contract's scope names it. None: any contract exempts.
    purpose: str | None = None
    # A header by which the dialer gives the callee's own IANA time zone (from its CRM); None: not read.
    callee_zone_header: str | None = None
    # A header the dialer may put on the BYE ending a call: `refusal` or `opposition` records what the
    # consumer said for the call's callee (sipfilter/b2bua/objections.py). None: not read.
    objection_header: str | None = None


@dataclass(frozen=True, slots=True)
class DigestUserConfig:
    username: str
    ha1: Mapping[str, str]  # algorithm (e.g. SHA-256, MD5) → hex H(username:realm:password)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Digest authentication of dialers (sipfilter/sip/digest.py), section `auth:`."""

    trunks: tuple[str, ...]
    realm: str
    algorithms: tuple[str, ...]  # preference order
    challenge: str  # proxy (407) | www (401)
    nonce_secrets_file: Path
    nonce_ttl_s: int
    bind_nonce_to_source: bool
    users: tuple[DigestUserConfig, ...]


@dataclass(frozen=True, slots=True)
class Config:
    """The whole running configuration; swap the object atomically to reload (see reload_config)."""

    path: Path
    sip: SipConfig
    admin: AdminConfig
    store: StoreConfig
    audit: AuditConfig
    logging: LoggingConfig
    rule_packs: Mapping[str, RulePack]  # name → loaded, validated pack
    trunks: Mapping[str, TrunkConfig]
    # trunk name → rule pack with that trunk's overrides applied, compiled once (policy engine input)
    rules: Mapping[str, RuleSet] = field(default_factory=lambda: MappingProxyType({}))
    # `limits:` (None when the section is absent)
    limits: LimitsConfig | None = None
    auth: AuthConfig | None = None


# What a running process applies only when it starts again; every other key takes effect on SIGHUP.
RESTART_KEYS = ("sip.inside", "sip.outside", "store.backend", "store.data_dir", "store.redis_url")


def listen_addresses(listens: Iterable[Listen]) -> tuple[tuple[str, str, int], ...]:
    """(transport, host, port) of each listener: what binding a socket depends on (a TLS listener's
    certificate, key and client_ca are not: a reload hands new connections a new context)."""
    return tuple((x.transport, x.host, x.port) for x in listens)


def restart_required(old: Config, new: Config) -> list[str]:
    """The keys of RESTART_KEYS whose value differs between the running config and a reloaded one."""
    changed = []
    if listen_addresses(old.sip.inside) != listen_addresses(new.sip.inside):
        changed.append("sip.inside")
    if listen_addresses(old.sip.outside) != listen_addresses(new.sip.outside):
        changed.append("sip.outside")
    for key in ("backend", "data_dir", "redis_url"):
        if getattr(old.store, key) != getattr(new.store, key):
            changed.append(f"store.{key}")
    return changed
