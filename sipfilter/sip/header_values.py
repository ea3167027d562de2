"""Typed header values (RFC 3261 §20 and extensions): list splitting, parameters, quoted strings, and the
Via, name-addr, CSeq, Reason, Warning, Retry-After, media-type and token-set parsers.

Each parser takes the raw value text(s) and raises ParseError; the Headers container (headers.py) caches
what they return.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import sipfilter.sip.grammar as g
from sipfilter.sip.errors import ParseError
from sipfilter.sip.uri import Uri, parse_uri

_NO_PARAMS: Final[Mapping[str, str | None]] = MappingProxyType({})


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quoted strings and <...>; empty items dropped."""
    if "," not in value:  # one item (the usual Via, Supported…): no list to build
        item = value.strip(" \t")
        return [item] if item else []
    if '"' not in value and "<" not in value:
        return [item for part in value.split(",") if (item := part.strip(" \t"))]
    items: list[str] = []
    start = 0
    i = 0
    n = len(value)
    quoted = False
    angle = False
    while i < n:
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif angle:
            if ch == ">":
                angle = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle = True
        elif ch == ",":
            items.append(value[start:i])
            start = i + 1
        i += 1
    items.append(value[start:])
    return [item for part in items if (item := part.strip(" \t"))]


# --- parameters ----------------------------------------------------------------------------------------
def parse_params(text: str) -> dict[str, str | None]:
    """`;name=value` parameters (already validated by the caller's pattern); names lower-cased."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    if '"' in text or "[" in text:
        for m in g.GENERIC_PARAM_RE.finditer(text):
            params[m.group("name").lower()] = m.group("value")
        return params
    # Validated text without quoted strings: plain splitting is exact, and several times faster.
    spaced = " " in text or "\t" in text
    for item in text.split(";")[1:]:
        name, eq, value = item.partition("=")
        if spaced:
            name = name.strip(" \t")
            value = value.strip(" \t")
        params[name.lower()] = value if eq else None
    return params


def _params_text(params: Mapping[str, str | None]) -> str:
    parts: list[str] = []
    for name, value in params.items():
        if not g.TOKEN_RE.fullmatch(name):
            raise ValueError(f"invalid parameter name: {name!r}")
        if value is None:
            parts.append(f";{name}")
        elif _GEN_VALUE_FULL.fullmatch(value):
            parts.append(f";{name}={value}")
        else:
            parts.append(f";{name}={quote(value)}")
    return "".join(parts)


_GEN_VALUE_FULL: Final = re.compile(g.GEN_VALUE)
_QUOTED_FULL: Final = re.compile(g.QUOTED_STRING)


def quote(text: str) -> str:
    """A quoted-string (RFC 3261 §25.1) for any text: the one way sipfilter writes display names and quoted
    parameter values. '\\' and '"' are backslash-escaped; control characters but HT (CR, LF, NUL…) become
    spaces, so no header can be injected and no C parser downstream meets a NUL; octets that were not UTF-8
    (kept by the parser as lone surrogates) become U+FFFD, so only valid UTF-8 is ever written."""
    if not (text.isascii() and text.isprintable()):
        text = g.CTL_RE.sub(" ", text)
        text = _SURROGATE.sub("\ufffd", text)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Undecodable octets (surrogateescape): see quote().
_SURROGATE: Final = re.compile(f"[{chr(0xD800)}-{chr(0xDFFF)}]")  # (mypyc takes no surrogate literal)


def unquote(text: str) -> str:
    """The content of a quoted-string (quoted-pairs resolved); other text is returned unchanged."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        if "\\" not in inner:
            return inner
        return g.QUOTED_PAIR_RE.sub(r"\1", inner)
    return text


# --- Via (RFC 3261 §20.42) ------------------------------------------------------------------------------
BRANCH_COOKIE: Final = "z9hG4bK"


@dataclass(frozen=True, slots=True, init=False)
class Via:
    """One via-parm. `raw` is the text as received (relay it unchanged)."""

    transport: str
    host: str
    port: int | None
    params: Mapping[str, str | None]
    protocol: str
    raw: str = field(compare=False)

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: Mapping[str, str | None] | None = None,
        protocol: str = "SIP/2.0",
        raw: str = "",
    ) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py): one per Via parsed.
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", {} if params is None else params)
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "raw", raw)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value, or None when absent or present without value (see `has_rport`)."""
        value = self.params.get("rport")
        return int(value) if value and value.isdigit() else None

    @property
    def has_rport(self) -> bool:
        return "rport" in self.params

    @property
    def has_rfc3261_branch(self) -> bool:
        """True when the branch carries the magic cookie AND something after it (RFC 4475 badbranch)."""
        branch = self.branch
        return branch is not None and branch.startswith(BRANCH_COOKIE) and len(branch) > len(BRANCH_COOKIE)

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        if not g.TOKEN_RE.fullmatch(self.transport) or not _HOST_FULL.fullmatch(self.host):
            raise ValueError(f"invalid Via transport/host: {self.transport!r} {self.host!r}")
        port = "" if self.port is None else f":{int(self.port)}"
        return f"{self.protocol}/{self.transport.upper()} {self.host}{port}{_params_text(self.params)}"


_HOST_FULL: Final = re.compile(g.HOST)


def _port(text: str | None) -> int | None:
    if text is None:
        return None
    port = int(text)
    if port > 65535:
        raise ParseError("Invalid port")
    return port


def parse_vias(values: Iterable[str]) -> list[Via]:
    """Every via-parm of the given Via lines, top first."""
    out: list[Via] = []
    match = g.VIA_RE.match
    for value in values:
        # A line with one via-parm differs per request only by its branch token: reuse the parse of a
        # line that had the same text around it, with the branch swapped in (same position in params).
        pre, sep, rest = value.partition(";branch=")
        if sep:
            branch, semi, post = rest.partition(";")
            if _TOKEN_FULLMATCH(branch) and ";branch=" not in post:
                key = f"{pre}\n{semi}{post}"  # LF never occurs in a value
                base = _VIA_MEMO.get(key)
                if base is not None:
                    params = dict(base.params)
                    params["branch"] = branch
                    out.append(Via(base.transport, base.host, base.port, params, base.protocol, value))
                    continue
                first = len(out)
                _parse_via_line(value, out, match)
                if len(out) == first + 1:
                    if len(_VIA_MEMO) >= _MEMO_MAX:
                        _VIA_MEMO.clear()
                    _VIA_MEMO[key] = out[first]
                continue
        _parse_via_line(value, out, match)
    return out


# Parsed single-via-parm lines keyed by their text without the branch value (see parse_vias); bounded.
_VIA_MEMO: Final[dict[str, Via]] = {}


def _parse_via_line(value: str, out: list[Via], match: Callable[[str, int], re.Match[str] | None]) -> None:
    """Append every via-parm of one Via line to `out`."""
    pos = 0
    n = len(value)
    while True:
        m = match(value, pos)
        if m is None:
            raise ParseError("Malformed Via header")
        port: str | None  # optional groups are None when absent (mypyc checks what is declared)
        params_text: str | None
        protocol, version, transport, host, port, params_text = m.groups()
        out.append(
            Via(
                transport.upper(),
                host,
                None if port is None else _port(port),
                parse_params(params_text) if params_text else {},
                "SIP/2.0" if protocol == "SIP" and version == "2.0" else f"{protocol.upper()}/{version}",
                value if pos == 0 and m.end() == n else m.group().strip(" \t"),
            )
        )
        pos = m.end()
        if pos == n:
            break
        c = g.COMMA_RE.match(value, pos)
        if c is None:
            raise ParseError("Malformed Via header")
        pos = c.end()


# --- name-addr / addr-spec (From, To, Contact, Route, P-Asserted-Identity, ...) -----------------------
@dataclass(frozen=True, slots=True, init=False)
class NameAddr:
    """A display name, URI and header parameters. `str()` always emits the safe <...> form."""

    uri: Uri
    display_name: str | None
    params: Mapping[str, str | None]
    raw: str = field(compare=False)

    def __init__(
        self,
        uri: Uri,
        display_name: str | None = None,
        params: Mapping[str, str | None] | None = None,
        raw: str = "",
    ) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py): one per From, To, Contact...
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "display_name", display_name)
        object.__setattr__(self, "params", {} if params is None else params)
        object.__setattr__(self, "raw", raw)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def expires(self) -> int | None:
        value = self.params.get("expires")
        return int(value) if value and value.isdigit() else None

    @property
    def q(self) -> str | None:
        return self.params.get("q")

    def with_params(self, **params: str | None) -> NameAddr:
        """A copy with these header params set (e.g. `with_params(tag="x")`)."""
        merged = dict(self.params)
        merged.update(params)
        return NameAddr(uri=self.uri, display_name=self.display_name, params=merged)

    def __str__(self) -> str:
        uri = str(self.uri)
        head = f"<{uri}>" if self.display_name is None else f"{quote(self.display_name)} <{uri}>"
        return head + _params_text(self.params)


def _display(text: str) -> str:
    return unquote(text) if text.startswith('"') else text


def parse_name_addr(value: str, what: str = "header") -> NameAddr:
    """One name-addr / addr-spec with header params (From, To): the single-value fast path."""
    # A dialer's From differs per call only by a trailing ;tag=<token>: reuse the parse of the rest.
    head, sep, tag = value.rpartition(";tag=")
    # Most tags are letters and digits: two C-level str tests, not the token pattern.
    if sep and ((tag.isascii() and tag.isalnum()) or _TOKEN_FULLMATCH(tag) is not None):
        memo = _TAGLESS_MEMO.get(head)
        if memo is None:
            base = _parse_name_addr(head, what)
            if len(_TAGLESS_MEMO) >= _MEMO_MAX:
                _TAGLESS_MEMO.clear()
            memo = _TAGLESS_MEMO[head] = (base, dict(base.params))
        base, base_params = memo
        params = base_params.copy()  # a dict's copy: much cheaper than dict() over the read-only view
        params["tag"] = tag  # same order and last-wins as a full parse of `value`
        return NameAddr(base.uri, base.display_name, MappingProxyType(params), value)
    return _parse_name_addr(value, what)


# name-addrs parsed without their trailing ;tag= (see parse_name_addr), with their params as a plain dict to
# copy; bounded, emptied when full.
_TAGLESS_MEMO: Final[dict[str, tuple[NameAddr, dict[str, str | None]]]] = {}
_TOKEN_FULLMATCH: Final = g.TOKEN_RE.fullmatch


# The usual shape, `["display"] <uri>[;token=token...]`: a simpler pattern that matches exactly what the
# full one would on such text (same groups), and several times faster.
_SIMPLE_NAME_ADDR_FULL: Final = re.compile(
    r'(?:("[^"\\\x00-\x08\x0a-\x1f\x7f]*")[ \t]*)?<([^<>\s]+)>'
    rf"((?:;[{g.TOKEN_CHARS}]+(?:=[{g.TOKEN_CHARS}]+)?)*)"
).fullmatch


def _addr_spec(uri_text: str | None, spec: str | None) -> str:
    # _NAME_ADDR_FULL matches either `<uri>` or a bare addr-spec: exactly one of the two groups is set.
    if spec is not None:
        return spec
    assert uri_text is not None
    return uri_text


def _parse_name_addr(value: str, what: str) -> NameAddr:
    # Optional groups are None when absent (mypyc checks what is declared).
    display: str | None
    uri_text: str | None
    spec: str | None
    params_text: str | None
    if value[:1] == "<" and value[-1:] == ">":
        # Bare "<uri>" (a To without tag): the patterns' `<([^<>\s]+)>`, with str methods only
        # (str.split() and re's \s both use Unicode white space).
        uri_text = value[1:-1]
        if "<" not in uri_text and ">" not in uri_text and uri_text.split() == [uri_text]:
            try:
                uri = parse_uri(uri_text)
            except ParseError:
                raise ParseError(f"Malformed {what}") from None
            return NameAddr(uri, None, _NO_PARAMS, value)
    s = _SIMPLE_NAME_ADDR_FULL(value)
    if s is not None:
        display, uri_text, params_text = s.groups()
        try:
            uri = parse_uri(uri_text)
        except ParseError:
            raise ParseError(f"Malformed {what}") from None
        return NameAddr(
            uri,
            None if display is None else display[1:-1],
            MappingProxyType(parse_params(params_text)) if params_text else _NO_PARAMS,
            value,
        )
    m = _NAME_ADDR_FULL(value)
    if m is None:
        raise ParseError(f"Malformed {what}")
    display, uri_text, spec, params_text = m.groups()
    try:
        uri = parse_uri(_addr_spec(uri_text, spec))
    except ParseError:
        raise ParseError(f"Malformed {what}") from None
    return NameAddr(
        uri,
        None if display is None else _display(display),
        MappingProxyType(parse_params(params_text)) if params_text else _NO_PARAMS,
        value,
    )


_NAME_ADDR_FULL: Final = g.NAME_ADDR_RE.fullmatch


def parse_name_addrs(values: Iterable[str], *, single: bool = False, what: str = "header") -> list[NameAddr]:
    """name-addr / addr-spec values with header params, from the given lines (comma lists split)."""
    out: list[NameAddr] = []
    display: str | None  # optional groups: see _parse_name_addr
    uri_text: str | None
    spec: str | None
    params_text: str | None
    match = g.NAME_ADDR_RE.match
    for value in values:
        cached = None if single else _NA_MEMO.get(value)
        if cached is not None:
            out.extend(cached)
            continue
        first = len(out)
        pos = 0
        n = len(value)
        while True:
            m = match(value, pos)
            if m is None:
                raise ParseError(f"Malformed {what}")
            display, uri_text, spec, params_text = m.groups()
            try:
                uri = parse_uri(_addr_spec(uri_text, spec))
            except ParseError:
                raise ParseError(f"Malformed {what}") from None
            out.append(
                NameAddr(
                    uri,
                    None if display is None else _display(display),
                    MappingProxyType(parse_params(params_text)) if params_text else _NO_PARAMS,
                    value if pos == 0 and m.end() == n else m.group().strip(" \t"),
                )
            )
            pos = m.end()
            if pos == n:
                break
            if single:
                raise ParseError(f"Malformed {what}")
            c = g.COMMA_RE.match(value, pos)
            if c is None:
                raise ParseError(f"Malformed {what}")
            pos = c.end()
        if len(_NA_MEMO) >= _MEMO_MAX:
            _NA_MEMO.clear()
        _NA_MEMO[value] = tuple(out[first:])
    return out


# Memo of Contact / P-Asserted-Identity / Route lines: a dialer repeats the same few on every call.
# NameAddr values are immutable (frozen, read-only params), so they can be shared; bounded, emptied
# when full. From/To lines carry per-call tags and go through parse_name_addr() instead.
_NA_MEMO: Final[dict[str, tuple[NameAddr, ...]]] = {}
_MEMO_MAX: Final = 4096


# --- CSeq, Reason, Warning, Retry-After, Content-Type ---------------------------------------------------
MAX_CSEQ: Final = 2**31 - 1  # RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31.


@dataclass(frozen=True, slots=True, init=False)
class CSeq:
    seq: int
    method: str

    def __init__(self, seq: int, method: str) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        object.__setattr__(self, "seq", seq)
        object.__setattr__(self, "method", method)

    def __str__(self) -> str:
        if not g.TOKEN_RE.fullmatch(self.method):
            raise ValueError(f"invalid CSeq method: {self.method!r}")
        return f"{int(self.seq)} {self.method}"


def parse_cseq(value: str) -> CSeq:
    cseq = _CSEQ_MEMO.get(value)  # "1 INVITE", "2 BYE"...: immutable values, shared
    if cseq is not None:
        return cseq
    digits, _, method = value.partition(" ")
    if method in _METHOD_NAMES and digits.isdigit() and digits.isascii() and len(digits) <= 9:
        cseq = CSeq(int(digits), method)  # the usual "<n> METHOD": what CSEQ_RE would give
        if len(_CSEQ_MEMO) >= _MEMO_MAX:
            _CSEQ_MEMO.clear()
        _CSEQ_MEMO[value] = cseq
        return cseq
    m = _CSEQ_FULL(value)
    if m is None:
        raise ParseError("Malformed CSeq")
    digits, method = m.groups()
    if len(digits) > 9:
        # Length check first: never turn a 10,000-digit string into an int.
        digits = digits.lstrip("0")
        if len(digits) > 10 or int(digits or "0") > 2**32 - 1:
            raise ParseError("CSeq number too large")
    return CSeq(int(digits or "0"), method)


_CSEQ_FULL: Final = g.CSEQ_RE.fullmatch
_CSEQ_MEMO: Final[dict[str, CSeq]] = {}
_METHOD_NAMES: Final = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH",
     "INFO", "REFER", "MESSAGE", "UPDATE"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Reason:
    """Reason header value (RFC 3326): protocol (SIP, Q.850, ...), cause, text, other params."""

    protocol: str
    cause: int | None = None
    text: str | None = None
    params: Mapping[str, str | None] = field(default_factory=dict)

    def __str__(self) -> str:
        if not g.TOKEN_RE.fullmatch(self.protocol):
            raise ValueError(f"invalid Reason protocol: {self.protocol!r}")
        params: dict[str, str | None] = {}
        if self.cause is not None:
            params["cause"] = str(int(self.cause))
        if self.text is not None:
            params["text"] = quote(self.text)
        params.update((k, v) for k, v in self.params.items() if k not in ("cause", "text"))
        return self.protocol + _params_text(params)


def parse_reasons(values: Iterable[str]) -> list[Reason]:
    out: list[Reason] = []
    for value in values:
        for item in split_list(value):
            m = g.REASON_RE.fullmatch(item)
            if m is None:
                raise ParseError("Malformed Reason header")
            params = parse_params(m.group("params"))
            cause_text = params.get("cause")
            if cause_text is not None and (not cause_text.isdigit() or len(cause_text) > 5):
                raise ParseError("Malformed Reason cause")
            text = params.get("text")
            out.append(
                Reason(
                    protocol=m.group("protocol"),
                    cause=int(cause_text) if cause_text is not None else None,
                    text=unquote(text) if text is not None else None,
                    params=params,
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class WarningValue:
    """Warning header value (RFC 3261 §20.43): 3-digit code, agent, text."""

    code: int
    agent: str
    text: str

    def __str__(self) -> str:
        if not 100 <= int(self.code) <= 999 or not _AGENT_FULL.fullmatch(self.agent):
            raise ValueError(f"invalid Warning code/agent: {self.code!r} {self.agent!r}")
        return f"{int(self.code)} {self.agent} {quote(self.text)}"


_AGENT_FULL: Final = re.compile(rf"(?:{g.HOST}(?::{g.PORT})?)|{g.TOKEN}")


def parse_warnings(values: Iterable[str]) -> list[WarningValue]:
    out: list[WarningValue] = []
    for value in values:
        for item in split_list(value):
            m = g.WARNING_RE.fullmatch(item)
            if m is None:
                raise ParseError("Malformed Warning header")
            out.append(WarningValue(int(m.group("code")), m.group("agent"), unquote(m.group("text"))))
    return out


@dataclass(frozen=True, slots=True)
class RetryAfter:
    seconds: int
    comment: str | None = None
    duration: int | None = None


def parse_retry_after(value: str) -> RetryAfter:
    m = g.RETRY_AFTER_RE.fullmatch(value)
    if m is None or len(m.group("seconds")) > 10:
        raise ParseError("Malformed Retry-After")
    params = parse_params(m.group("params"))
    duration = params.get("duration")
    if duration is not None and (not duration.isdigit() or len(duration) > 10):
        raise ParseError("Malformed Retry-After duration")
    comment: str | None = m.group("comment")
    return RetryAfter(
        seconds=int(m.group("seconds")),
        comment=comment[1:-1] if comment else None,
        duration=int(duration) if duration is not None else None,
    )


@dataclass(frozen=True, slots=True)
class MediaType:
    """Content-Type value: lower-cased type/subtype and parameters."""

    type: str
    subtype: str
    params: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def mime(self) -> str:
        return f"{self.type}/{self.subtype}"

    def __str__(self) -> str:
        return self.mime + _params_text(self.params)


def parse_media_type(value: str) -> MediaType:
    media = _MEDIA_MEMO.get(value)  # "application/sdp" on nearly every INVITE and answer
    if media is not None:
        return media
    m = g.MEDIA_TYPE_RE.fullmatch(value)
    if m is None:
        raise ParseError("Malformed Content-Type")
    params = MappingProxyType(parse_params(m.group("params")))
    media = MediaType(m.group("type").lower(), m.group("subtype").lower(), params)
    if len(_MEDIA_MEMO) >= _MEMO_MAX:
        _MEDIA_MEMO.clear()
    _MEDIA_MEMO[value] = media
    return media


# Parsed Content-Type values: immutable (frozen, read-only params), so shared; bounded, emptied when full.
_MEDIA_MEMO: Final[dict[str, MediaType]] = {}


def parse_token_set(values: Iterable[str], sep: str = ",") -> frozenset[str]:
    """Option tags / privacy values: lower-cased tokens separated by `sep`."""
    out: set[str] = set()
    for value in values:
        for part in value.split(sep):
            item = part.strip(" \t")
            if not item:
                continue
            if not g.TOKEN_RE.fullmatch(item):
                raise ParseError("Malformed token list")
            out.add(item.lower())
    return frozenset(out)
