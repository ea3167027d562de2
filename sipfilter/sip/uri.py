"""SIP, SIPS and tel URIs: parsing, RFC 3261 §19.1.4 comparison, and injection-safe serialization.

Pure functions and frozen values only; no DNS, no number normalisation (that is policy's job).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final
from urllib.parse import unquote

import sipfilter.sip.grammar as g
from sipfilter.sip.errors import ParseError

__all__ = [
    "AbsoluteUri",
    "SipUri",
    "TelUri",
    "Uri",
    "escape",
    "parse_uri",
    "unescape",
    "uri_equal",
]

_NO_PARAMS: Final[Mapping[str, str | None]] = MappingProxyType({})
_NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})


def safe_characters(char_class: str) -> str:
    """The characters a character class of the grammar allows, written out: all ASCII (tests/sip check that
    no other character matches), so that `escape` tests a text with one C-level str method, not a regex."""
    pattern = re.compile(f"[{char_class}]")
    return "".join(c for c in map(chr, range(128)) if pattern.fullmatch(c))


# Characters that may appear unescaped in each URI component (RFC 3261 §25.1).
USER_SAFE: Final = safe_characters(g.UNRESERVED + g.USER_UNRESERVED)
PASSWORD_SAFE: Final = safe_characters(g.UNRESERVED + "&=+$,")
PARAM_SAFE: Final = safe_characters(g.UNRESERVED + r"\[\]/:&+$")
HEADER_SAFE: Final = safe_characters(g.UNRESERVED + r"\[\]/?:+$")
_HOST_RE: Final = re.compile(rf"(?:{g.IPV6REFERENCE}|{g.HOSTNAME})")
_HOSTS: Final[set[str]] = set()  # recent hosts that matched _HOST_RE (a refused one is never kept)
_HOSTS_MAX: Final = 4096
_TEL_NUMBER_RE: Final = re.compile(rf"{g.TEL_GLOBAL}|{g.TEL_LOCAL}")
_SCHEME_RE: Final = re.compile(g.SCHEME)
_OPAQUE_RE: Final = re.compile(r"[^\s<>\"\x00-\x1f\x7f]+")
_VISUAL: Final = str.maketrans("", "", "-.()")
# §19.1.4: these parameters must match when present in either URI.
_STRICT_PARAMS: Final = ("user", "ttl", "method", "maddr", "transport")


def unescape(text: str) -> str:
    """Decode %HH escapes (as UTF-8; undecodable octets are kept as surrogates, so nothing is lost)."""
    if "%" not in text:
        return text
    return unquote(text, errors="surrogateescape")


def escape(text: str, safe: str) -> str:
    """%-escape every character not in `safe` (one of the *_SAFE sets: CR, LF, '<', '>', '"' are in none)."""
    if not text.strip(safe):  # every character is safe (strip removes them all)
        return text
    out: list[str] = []
    for ch in text:
        if ch in safe:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def _params_text(params: Mapping[str, str | None]) -> str:
    parts: list[str] = []
    for name, value in params.items():
        if not name:
            raise ValueError("empty URI parameter name")
        parts.append(";" + escape(name, PARAM_SAFE))
        if value:  # pvalue cannot be empty (§25.1): an empty value is written as a bare name
            parts.append("=" + escape(value, PARAM_SAFE))
    return "".join(parts)


@dataclass(frozen=True, slots=True, init=False)
class SipUri:
    """sip:/sips: URI. Components are stored unescaped; params keep order, names are lower-cased."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: Mapping[str, str | None]
    headers: Mapping[str, str]

    def __init__(
        self,
        scheme: str = "sip",
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: Mapping[str, str | None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py): one per URI parsed.
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "password", password)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", {} if params is None else params)
        object.__setattr__(self, "headers", {} if headers is None else headers)

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def is_phone(self) -> bool:
        """True for user=phone: the user part is a telephone-subscriber (RFC 3261 §19.1.1)."""
        return (self.params.get("user") or "").lower() == "phone"

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        scheme = self.scheme.lower()
        if scheme not in ("sip", "sips"):
            raise ValueError(f"not a SIP URI scheme: {self.scheme!r}")
        host = self.host
        if host not in _HOSTS:  # the same few hosts in every URI a B2BUA writes: checked once
            if not _HOST_RE.fullmatch(host):
                raise ValueError(f"invalid host in SIP URI: {host!r}")
            if len(_HOSTS) >= _HOSTS_MAX:
                _HOSTS.clear()
            _HOSTS.add(host)
        parts = [scheme, ":"]
        if self.user == "":
            raise ValueError("empty user part in SIP URI (use user=None)")
        if self.user is not None:
            parts.append(escape(self.user, USER_SAFE))
            if self.password is not None:
                parts.append(":" + escape(self.password, PASSWORD_SAFE))
            parts.append("@")
        parts.append(host)
        if self.port is not None:
            parts.append(f":{int(self.port)}")
        if self.params:
            parts.append(_params_text(self.params))
        if self.headers:
            parts.append(
                "?"
                + "&".join(
                    f"{escape(k, HEADER_SAFE)}={escape(v, HEADER_SAFE)}" for k, v in self.headers.items()
                )
            )
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class TelUri:
    """tel: URI (RFC 3966): the number as written (visual separators kept) and its parameters."""

    number: str
    params: Mapping[str, str | None] = field(default_factory=dict)
    scheme: str = "tel"

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    @property
    def digits(self) -> str:
        """The number without visual separators ('+' kept for global numbers)."""
        return self.number.translate(_VISUAL)

    @property
    def phone_context(self) -> str | None:
        return self.params.get("phone-context")

    def __str__(self) -> str:
        if not _TEL_NUMBER_RE.fullmatch(self.number):
            raise ValueError(f"invalid tel number: {self.number!r}")
        return "tel:" + self.number + _params_text(self.params)


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """Any other scheme, kept opaque (RFC 3261 §19: an element must not fail on unknown schemes)."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        if not _SCHEME_RE.fullmatch(self.scheme) or not _OPAQUE_RE.fullmatch(self.opaque):
            raise ValueError(f"invalid absolute URI: {self.scheme!r}:{self.opaque!r}")
        return f"{self.scheme}:{self.opaque}"


Uri = SipUri | TelUri | AbsoluteUri


def _parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    if not text:
        return params
    escaped = "%" in text
    for item in text[1:].split(";"):
        name, eq, value = item.partition("=")
        if escaped:
            name = unescape(name)
            value = unescape(value)
        params[name.lower()] = value if eq else None
    return params


# Memo of parsed URIs: the same few URIs (a dialer's caller IDs, Contacts, carrier hosts) recur on
# every call. Values are immutable (frozen, read-only mappings), so sharing them is safe; the memo is
# bounded and simply emptied when full.
_MEMO: Final[dict[str, Uri]] = {}
_MEMO_MAX: Final = 4096


def parse_uri(text: str) -> Uri:
    """Parse a URI; unknown schemes give an AbsoluteUri. Raises ParseError (400) on malformed text.

    Returned params/headers mappings are read-only: use dataclasses.replace() to derive a new URI.
    """
    uri = _MEMO.get(text)
    if uri is None:
        uri = _by_host_part(text) or _parse_uri(text)
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[text] = uri
    return uri


# Callees differ per call only by the user part (sip:+336...@carrier;user=phone): SIP URIs with a
# user and no password, keyed by their text with the user part cut out (scheme ':' '@' rest).
_HOST_PART_MEMO: Final[dict[str, SipUri]] = {}
_USER_FULL: Final = re.compile(rf"{g.USER_CHARS}+").fullmatch


def _by_host_part(text: str) -> Uri | None:
    """The URI built from a memoised one with the same text after '@', or None (then parse in full)."""
    scheme, _, rest = text.partition(":")
    user, at, host_part = rest.partition("@")
    if not at or not _USER_FULL(user):
        return None
    key = f"{scheme}:@{host_part}"
    base = _HOST_PART_MEMO.get(key)
    if base is None:
        uri = _parse_uri(text)
        if isinstance(uri, SipUri) and uri.user is not None and uri.password is None:
            if len(_HOST_PART_MEMO) >= _MEMO_MAX:
                _HOST_PART_MEMO.clear()
            _HOST_PART_MEMO[key] = uri
        return uri
    if "%" in user:
        if g.BAD_ESCAPE_RE.search(user):
            raise ParseError("Malformed escape in URI")
        user = unescape(user)
    return SipUri(base.scheme, user, None, base.host, base.port, base.params, base.headers)


def _parse_uri(text: str) -> Uri:
    head = text[:5].lower()
    if head.startswith("sip"):
        m = _SIP_URI_MATCH(text)
        if m is not None:
            user: str | None  # optional groups are None when absent (mypyc checks what is declared)
            password: str | None
            port_text: str | None
            params_text: str | None
            headers_text: str | None
            scheme, user, password, host, port_text, params_text, headers_text = m.groups()
            if "%" in text and g.BAD_ESCAPE_RE.search(text):
                raise ParseError("Malformed escape in URI")
            port = None
            if port_text:
                port = int(port_text)
                if port > 65535:
                    raise ParseError("Invalid port in URI")
            headers: Mapping[str, str] = _NO_HEADERS
            if headers_text:
                pairs = (h.partition("=") for h in headers_text.split("&"))
                headers = MappingProxyType({unescape(k): unescape(v) for k, _, v in pairs})
            return SipUri(
                scheme.lower(),
                None if user is None else unescape(user),
                None if password is None else unescape(password),
                host,
                port,
                MappingProxyType(_parse_params(params_text)) if params_text else _NO_PARAMS,
                headers,
            )
        if head.startswith(("sip:", "sips:")):
            raise ParseError("Malformed SIP URI")
    elif head.startswith("tel:"):
        t = g.TEL_URI_RE.fullmatch(text)
        if t is None or ("%" in text and g.BAD_ESCAPE_RE.search(text)):
            raise ParseError("Malformed tel URI")
        return TelUri(number=t.group("number"), params=MappingProxyType(_parse_params(t.group("params"))))
    a = g.ABSOLUTE_URI_RE.fullmatch(text)
    if a is None:
        raise ParseError("Malformed URI")
    return AbsoluteUri(scheme=a.group("scheme").lower(), opaque=a.group("opaque"))


_SIP_URI_MATCH: Final = g.SIP_URI_RE.fullmatch


def _host_key(host: str) -> str:
    return host.lower().rstrip(".")


def _sip_equal(a: SipUri, b: SipUri) -> bool:
    if a.scheme != b.scheme or a.user != b.user or a.password != b.password:
        return False
    if _host_key(a.host) != _host_key(b.host) or a.port != b.port:
        return False
    pa = {k: (v.lower() if v is not None else None) for k, v in a.params.items()}
    pb = {k: (v.lower() if v is not None else None) for k, v in b.params.items()}
    for name in _STRICT_PARAMS:
        if pa.get(name, "\0") != pb.get(name, "\0"):
            return False
    for name in pa.keys() & pb.keys():
        if pa[name] != pb[name]:
            return False
    ha = {k.lower(): v for k, v in a.headers.items()}
    hb = {k.lower(): v for k, v in b.headers.items()}
    return ha == hb


def uri_equal(a: Uri, b: Uri) -> bool:
    """URI equivalence: RFC 3261 §19.1.4 for SIP/SIPS, RFC 3966 §4 for tel, exact text otherwise."""
    if isinstance(a, SipUri) and isinstance(b, SipUri):
        return _sip_equal(a, b)
    if isinstance(a, TelUri) and isinstance(b, TelUri):
        if a.digits.lower() != b.digits.lower():
            return False
        pa = {k: (v.lower() if v is not None else None) for k, v in a.params.items()}
        pb = {k: (v.lower() if v is not None else None) for k, v in b.params.items()}
        return pa == pb
    if isinstance(a, AbsoluteUri) and isinstance(b, AbsoluteUri):
        return a.scheme == b.scheme and a.opaque == b.opaque
    return False
