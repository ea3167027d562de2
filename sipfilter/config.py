"""One typed, validated model of the YAML configuration (config/sipfilter.yaml) and its rule packs.

Errors name file, line and field (ConfigError); this module reads files but never opens sockets or stores.
"""

from __future__ import annotations

import builtins
import difflib
import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from sipfilter.identity.settings import IdentityConfig
    from sipfilter.policy.rulepack import RulePack, RuleSet

T = TypeVar("T")
log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration problem a person can fix: where (file, line, field) and what."""

    def __init__(
        self, message: str, file: str | Path | None = None, line: int | None = None, field: str = ""
    ):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        where = ""
        if self.file:
            where = self.file + (f":{line}" if line else "") + ": "
        super().__init__(f"{where}{field + ': ' if field else ''}{message}")


# --------------------------------------------------------------------------------------------------
# YAML with line numbers: every mapping/sequence remembers its file and the line of each entry.


class YamlMap(dict[Any, Any]):
    """A YAML mapping that remembers where it and each of its values came from."""

    file: str
    line: int
    lines: dict[Any, int]
    files: dict[Any, str]  # only for values merged in from another file (trunk overrides)


class YamlSeq(list[Any]):
    """A YAML sequence that remembers where it and each of its items came from."""

    file: str
    line: int
    lines: list[int]


class _Loader(yaml.SafeLoader):
    source: str = "<config>"


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> YamlMap:
    loader.flatten_mapping(node)
    result = YamlMap()
    result.file = loader.source
    result.line = node.start_mark.line + 1
    result.lines = {}
    result.files = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise ConfigError(
                "mapping keys must be plain scalars", loader.source, key_node.start_mark.line + 1
            )
        if key in result:
            raise ConfigError(f"duplicate key {key!r}", loader.source, key_node.start_mark.line + 1)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = value_node.start_mark.line + 1
    return result


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> YamlSeq:
    result = YamlSeq(loader.construct_object(child, deep=True) for child in node.value)
    result.file = loader.source
    result.line = node.start_mark.line + 1
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def load_yaml(path: str | Path) -> YamlMap:
    """Read one YAML file whose top level is a mapping; syntax errors become ConfigError with a line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", path) from exc
    loader = _Loader(text)
    loader.source = str(path)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", path, line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path) from exc
    finally:
        loader.dispose()
    if data is None:
        data = YamlMap()
        data.file, data.line, data.lines, data.files = str(path), 1, {}, {}
    if not isinstance(data, YamlMap):
        raise ConfigError("the top level must be a mapping", path, 1)
    return data


def merge_overrides(base: YamlMap, overrides: Mapping[Any, Any]) -> YamlMap:
    """Deep-merge `overrides` onto a copy of `base`; merged values keep their own file/line for errors."""
    result = YamlMap(base)
    result.file, result.line, result.lines = base.file, base.line, dict(base.lines)
    result.files = dict(getattr(base, "files", {}))
    src_lines = getattr(overrides, "lines", {})
    src_file = getattr(overrides, "file", None)
    for key, value in overrides.items():
        if isinstance(value, YamlMap) and isinstance(result.get(key), YamlMap):
            result[key] = merge_overrides(result[key], value)
        else:
            result[key] = value
        if key in src_lines:
            result.lines[key] = src_lines[key]
        if src_file:
            result.files[key] = src_file
    return result


# --------------------------------------------------------------------------------------------------
# Typed reading of one section: every accessor names the field and line when it refuses a value.

_REQUIRED: Any = object()


class Section:
    """A view of one YAML mapping at a dotted path, with typed accessors that raise ConfigError."""

    def __init__(
        self, data: Mapping[Any, Any], path: builtins.str, file: builtins.str = "", line: builtins.int = 0
    ):
        self.data = data
        self.path = path
        self.file = getattr(data, "file", file)
        self.line = getattr(data, "line", line)
        self._lines: Mapping[Any, builtins.int] = getattr(data, "lines", {})
        self._files: Mapping[Any, builtins.str] = getattr(data, "files", {})

    def field(self, key: builtins.str) -> builtins.str:
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: builtins.str) -> builtins.int:
        return self._lines.get(key, self.line)

    def error(self, key: builtins.str, message: builtins.str) -> ConfigError:
        value = self.data.get(key)
        file = getattr(value, "file", None) or self._files.get(key) or self.file
        return ConfigError(message, file, self.line_of(key), self.field(key))

    def has(self, key: builtins.str) -> builtins.bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: builtins.str, default: Any = _REQUIRED) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError("missing required field", self.file, self.line, self.field(key))
            return default
        return self.data[key]

    def only(self, allowed: Iterable[builtins.str]) -> None:
        """Refuse unknown keys (typos must not silently disable a rule)."""
        allowed = list(allowed)
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(allowed)})"
                raise self.error(key, f"unknown field{hint}")

    def str(self, key: builtins.str, default: Any = _REQUIRED, *, nullable: builtins.bool = False) -> Any:
        value = self.raw(key, default)
        if value is None and (nullable or default is None):
            return None
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return value

    def int(
        self,
        key: builtins.str,
        default: Any = _REQUIRED,
        *,
        lo: builtins.int | None = None,
        hi: builtins.int | None = None,
    ) -> Any:
        value = self.raw(key, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if lo is not None and value < lo:
            raise self.error(key, f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise self.error(key, f"must be <= {hi}, got {value}")
        return value

    def number(self, key: builtins.str, default: Any = _REQUIRED, *, lo: builtins.float | None = None) -> Any:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {value!r}")
        if lo is not None and value < lo:
            raise self.error(key, f"must be >= {lo}, got {value}")
        return float(value)

    def bool(self, key: builtins.str, default: Any = _REQUIRED) -> builtins.bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def choice(self, key: builtins.str, choices: Iterable[builtins.str], default: Any = _REQUIRED) -> Any:
        choices = tuple(choices)
        value = self.raw(key, default)
        if value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def section(self, key: builtins.str, default_empty: builtins.bool = False) -> Section:
        value = self.raw(key, YamlMap() if default_empty else _REQUIRED)
        if value is None and default_empty:
            value = YamlMap()
        if not isinstance(value, Mapping):
            raise self.error(key, f"expected a mapping, got {value!r}")
        sub = Section(value, self.field(key), self.file, self.line_of(key))
        return sub

    def list(self, key: builtins.str, default: Any = _REQUIRED) -> builtins.list[Any]:
        value = self.raw(key, default)
        if value is None and default is not _REQUIRED:
            value = default  # `key: null` means the default, as leaving the key out does
        if value is None:
            return []
        if isinstance(value, tuple) and value is default:  # a default written in this module
            return list(value)
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {value!r}")
        return list(value)

    def str_list(self, key: builtins.str, default: Any = _REQUIRED) -> tuple[builtins.str, ...]:
        items = self.list(key, default)
        for item in items:
            if not isinstance(item, str) or not item:
                raise self.error(key, f"expected a list of non-empty strings, got item {item!r}")
        return tuple(items)

    def item_error(self, key: builtins.str, index: builtins.int, message: builtins.str) -> ConfigError:
        """An error about item `index` of the list at `key` (in the file that list came from)."""
        value = self.data.get(key)
        file = getattr(value, "file", None) or self._files.get(key) or self.file
        return ConfigError(message, file, self.item_line(key, index), f"{self.field(key)}[{index}]")

    def item_line(self, key: builtins.str, index: builtins.int) -> builtins.int:
        value = self.data.get(key)
        lines = getattr(value, "lines", None)
        return lines[index] if lines and index < len(lines) else self.line_of(key)

    def items(self, key: builtins.str) -> builtins.list[Section]:
        """A list of mappings, each as a Section named key[i]."""
        out = []
        for i, item in enumerate(self.list(key)):
            if not isinstance(item, Mapping):
                raise self.item_error(key, i, f"expected a mapping, got {item!r}")
            out.append(Section(item, f"{self.field(key)}[{i}]", self.file, self.item_line(key, i)))
        return out

    def path_(self, key: builtins.str, default: Any = _REQUIRED, *, keep_link: builtins.bool = False) -> Path:
        """A file-system path; relative paths are relative to the file that holds the value. `keep_link`:
        the last component is not resolved (a symlink the operator may repoint is followed at each open)."""
        value = self.str(key, default)
        if not self.file:
            return Path(value)
        path: Path = Path(self.file).parent / value
        return path.parent.resolve() / path.name if keep_link else path.resolve()


# --------------------------------------------------------------------------------------------------
# The model. Field names follow config/sipfilter.yaml exactly (`pass` becomes `pass_`).

TRANSPORTS = ("udp", "tcp", "tls")


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
    # `limits:` as sipfilter.b2bua.limits.LimitsConfig (None when the section is absent)
    limits: Any = None
    auth: AuthConfig | None = None


# --------------------------------------------------------------------------------------------------
# Section readers.

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def _listen(s: Section) -> Listen:
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
    if transport != "tls":
        return Listen(transport, host, port, cert, key)
    assert cert is not None and key is not None
    from sipfilter.transport.stream import TlsSetupError, tls_server_context

    # Built now, so that `config check` and a reload name a bad file rather than the start-up.
    try:
        context = tls_server_context(str(cert), str(key), str(client_ca) if client_ca else None)
    except TlsSetupError as exc:
        raise s.error(exc.part, f"{exc} ({client_ca if exc.part == 'client_ca' else cert})") from exc
    return Listen(transport, host, port, cert, key, client_ca, context)


def _sip(s: Section) -> SipConfig:
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
    inside = tuple(_listen(x) for x in s.items("inside"))
    outside = tuple(_listen(x) for x in s.items("outside"))
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
    """`sip.workers`: a count, or `auto` for one per core. Several workers need UDP-only listeners: a stream
    connection stays in the process that accepted it, and its calls would bypass the callee's owner."""
    if s.raw("workers", 1) == "auto":
        workers: int = os.cpu_count() or 1
    else:
        workers = s.int("workers", 1, lo=1, hi=256)
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


def _admin(s: Section) -> AdminConfig:
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


def _store(s: Section) -> StoreConfig:
    s.only(["backend", "data_dir", "redis_url"])
    backend = s.choice("backend", ("embedded", "redis"), "embedded")
    redis_url = s.str("redis_url", "redis://127.0.0.1:6379/0")
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise s.error("redis_url", f"expected redis://, rediss:// or unix:// URL, got {redis_url!r}")
    from sipfilter.stores.redis_url import redis_options  # not at the top: the stores package imports config

    try:
        redis_options(redis_url)
    except ValueError as exc:
        raise s.error("redis_url", str(exc)) from None
    return StoreConfig(backend, s.path_("data_dir", "var/data"), redis_url)


def _audit(s: Section) -> AuditConfig:
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


def _logging(s: Section) -> LoggingConfig:
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


def _trunk(name: str, s: Section, pack_names: Iterable[str],
           tls_seen: dict[tuple[str, int], TargetTls] | None = None) -> TrunkConfig:  # fmt: skip
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
        target = Target(uri, transport, t.int("priority", 1, lo=0), t.int("weight", 1, lo=0),
                        _target_tls(t, transport))  # fmt: skip
        if tls_seen is not None and target.tls is not None:
            _same_tls_per_address(t, target, tls_seen)
        targets.append(target)
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
        identity=_identity(s),
        purpose=purpose,
        callee_zone_header=_header_name(s, "callee_zone_header"),
        objection_header=_header_name(s, "objection_header"),
    )


def _identity(trunk: Section) -> IdentityConfig | None:
    """`identity:` (STIR/SHAKEN verify and sign), read by its owner; files are read now."""
    if not trunk.has("identity"):
        return None
    from sipfilter.identity.settings import read_identity

    return read_identity(trunk.section("identity"))


_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # RFC 3261 token


def _header_name(s: Section, key: str) -> str | None:
    name: str | None = s.str(key, None, nullable=True)
    if name is not None and not _HEADER_NAME_RE.match(name):
        raise s.error(key, f"expected a SIP header name such as X-Sipfilter-Objection, got {name!r}")
    return name


def _target_tls(t: Section, transport: str) -> TargetTls | None:
    """`tls:` of one target, its client context built here (once per load): errors name the field."""
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
    from sipfilter.transport.stream import TlsSetupError, tls_client_context

    try:
        context = tls_client_context(ca=str(ca) if ca else None, verify=verify, min_version=version,
                                     cert=str(cert) if cert else None, key=str(key) if key else None,
                                     crl=str(crl) if crl else None)  # fmt: skip
    except TlsSetupError as exc:
        raise s.error(exc.part if s.has(exc.part) else "ca", str(exc)) from exc
    if not verify:
        uri = t.data.get("uri")
        log.warning("%s:%s: %s: TLS certificate verification is OFF for %s (tls.verify: false): anyone on "
                    "the path can impersonate this carrier", s.file, s.line, s.path, uri)  # fmt: skip
    return TargetTls(ca, server_name, verify, cert, key, version, crl, context)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _same_tls_per_address(t: Section, target: Target, seen: dict[tuple[str, int], TargetTls]) -> None:
    """One connection serves an address, so every target at that host:port must verify it the same way."""
    from sipfilter.b2bua.trunks import destination_of

    assert target.tls is not None
    try:
        dest = destination_of(target)
    except ValueError as exc:
        raise t.error("uri", f"cannot read host and port: {exc}") from exc
    first = seen.setdefault(dest.addr, target.tls)
    if first != target.tls:
        raise t.error("tls", f"another target at {dest.host}:{dest.port} has different tls settings "
                             "(one connection serves both): make them identical")  # fmt: skip


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


def _auth(s: Section, trunks: Mapping[str, TrunkConfig]) -> AuthConfig:
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


def _limits(root: Section, trunks: Mapping[str, TrunkConfig]) -> Any:
    """Validated by its owner (sipfilter.b2bua.limits); errors are given the line of the field they name."""
    if not root.has("limits"):
        return None
    s = root.section("limits")
    per_trunk = s.section("trunks", default_empty=True)
    for name in per_trunk.data:
        if name not in trunks:
            raise per_trunk.error(str(name), f"no trunk named {name!r}")
    from sipfilter.b2bua.limits import LimitsConfig

    try:
        return LimitsConfig.from_mapping(s.data)
    except ValueError as exc:
        # The message names a dotted field (e.g. limits.trunks.dialer.max_cps): find its line.
        match = re.search(r"\blimits(\.[\w.-]+)?", str(exc))
        node: Any = s.data
        line, file = s.line, s.file
        for part in (match.group(1) or "").strip(".").split(".") if match else ():
            if isinstance(node, YamlMap) and part in node:
                line, file, node = node.lines.get(part, line), node.file, node[part]
            else:
                break
        raise ConfigError(str(exc), file, line, match.group(0) if match else "limits") from exc


def load_config(path: str | Path) -> Config:
    """Read, validate and compile the configuration and its rule packs; raises ConfigError."""
    # Imported here: the policy package reads this module's Section helpers (no import cycle at load).
    from sipfilter.policy.rulepack import compile_rules, load_rule_pack

    path = Path(path).resolve()
    root = Section(load_yaml(path), "")
    root.only(["sip", "admin", "store", "audit", "logging", "rule_packs", "trunks", "limits", "auth"])
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
        trunk = _trunk(str(name), trunks_s.section(str(name)), packs, tls_seen)
        trunks[trunk.name] = trunk
        rules[trunk.name] = compile_rules(packs[trunk.rule_pack], trunk)
    if not trunks:
        raise root.error("trunks", "at least one trunk is required")
    return Config(
        path=path,
        sip=_sip(root.section("sip")),
        admin=_admin(root.section("admin", default_empty=True)),
        store=_store(root.section("store", default_empty=True)),
        audit=_audit(root.section("audit")),
        logging=_logging(root.section("logging", default_empty=True)),
        rule_packs=MappingProxyType(packs),
        trunks=MappingProxyType(trunks),
        rules=MappingProxyType(rules),
        limits=_limits(root, trunks),
        auth=_auth(root.section("auth"), trunks) if root.has("auth") else None,
    )


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


def reload_config(current: Config) -> Config:
    """Re-read the file `current` came from; on ConfigError the caller keeps running with `current`."""
    return load_config(current.path)
