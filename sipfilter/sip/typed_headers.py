"""The typed header accessors of SIP messages: one parser per header, and the cached properties calling them.

An accessor parses its header on first use (ParseError on a malformed value) and caches the value in the
message's Headers, whose changes drop the cache. The properties are generated from the ACCESSORS table by
scripts/generate_accessors (tests/sip/test_accessors_generated.py fails when they differ from it): plain
code, so that mypyc compiles each into a direct call of its parser.
"""

from __future__ import annotations

from typing import Final

import sipfilter.sip.grammar as g
from sipfilter.sip.errors import ParseError
from sipfilter.sip.header_values import (
    CSeq,
    MediaType,
    NameAddr,
    Reason,
    RetryAfter,
    Via,
    WarningValue,
    parse_cseq,
    parse_media_type,
    parse_name_addr,
    parse_name_addrs,
    parse_reasons,
    parse_retry_after,
    parse_token_set,
    parse_vias,
    parse_warnings,
)
from sipfilter.sip.headers import ABSENT, Headers

CONTENT_LENGTH: Final = "content-length"


# --- the parsers: one per accessor, module level so the accessors call them directly --------------------
def _single(h: Headers, key: str, what: str) -> str:
    i = h.position(key)
    if i < 0:
        raise ParseError(f"Missing {what} header" if i == ABSENT else f"Multiple {what} headers")
    return h._value(i)


def _vias(h: Headers) -> list[Via]:
    return parse_vias(h.lines_of("via"))


def _from(h: Headers) -> NameAddr:
    return parse_name_addr(_single(h, "from", "From"), "From header")


def _to(h: Headers) -> NameAddr:
    return parse_name_addr(_single(h, "to", "To"), "To header")


def _call_id(h: Headers) -> str:
    value = _single(h, "call-id", "Call-ID")
    if value not in _CALL_IDS:  # a dialog's every message carries its Call-ID: checked once
        if not g.CALL_ID_RE.fullmatch(value):
            raise ParseError("Malformed Call-ID")
        if len(_CALL_IDS) >= _CALL_IDS_MAX:
            _CALL_IDS.clear()
        _CALL_IDS.add(value)
    return value


_CALL_IDS: Final[set[str]] = set()  # recent Call-IDs that matched the grammar
_CALL_IDS_MAX: Final = 16384


def _cseq(h: Headers) -> CSeq:
    return parse_cseq(_single(h, "cseq", "CSeq"))


def _contacts(h: Headers) -> list[NameAddr]:
    lines = h.lines_of("contact")
    if len(lines) == 1 and lines[0] == "*":
        return []
    return parse_name_addrs(lines, what="Contact header")


def _contact_star(h: Headers) -> bool:
    lines = h.lines_of("contact")
    if "*" in lines and len(lines) > 1:
        raise ParseError("Contact * mixed with other contacts")
    return lines == ["*"]


def _routes(h: Headers) -> list[NameAddr]:
    return parse_name_addrs(h.lines_of("route"), what="Route header")


def _record_routes(h: Headers) -> list[NameAddr]:
    return parse_name_addrs(h.lines_of("record-route"), what="Record-Route header")


def _pais(h: Headers) -> list[NameAddr]:
    return parse_name_addrs(h.lines_of("p-asserted-identity"), what="P-Asserted-Identity header")


def _ppis(h: Headers) -> list[NameAddr]:
    return parse_name_addrs(h.lines_of("p-preferred-identity"), what="P-Preferred-Identity header")


def _int_header(h: Headers, key: str, what: str) -> int | None:
    lines = h.lines_of(key)
    if not lines:
        return None
    if len(lines) > 1:
        raise ParseError(f"Multiple {what} headers")
    value = lines[0]
    if not (value.isdigit() and value.isascii()) or len(value.lstrip("0")) > 10:
        raise ParseError(f"Malformed {what}")
    return int(value)


def _max_forwards(h: Headers) -> int | None:
    i = h.position("max-forwards")
    if i >= 0:
        small = _SMALL_INTS.get(h._value(i))
        if small is not None:
            return small  # "70": what _int_header gives, without its checks
    return _int_header(h, "max-forwards", "Max-Forwards")


_SMALL_INTS: Final = {str(i): i for i in range(256)}


def _expires(h: Headers) -> int | None:
    return _int_header(h, "expires", "Expires")


def _content_length(h: Headers) -> int | None:
    return _int_header(h, CONTENT_LENGTH, "Content-Length")


def _content_type(h: Headers) -> MediaType | None:
    value = h.get("content-type")
    return None if value is None else parse_media_type(value)


def _privacy(h: Headers) -> frozenset[str]:
    return parse_token_set(h.lines_of("privacy"), sep=";")


def _reasons(h: Headers) -> list[Reason]:
    return parse_reasons(h.lines_of("reason"))


def _warnings(h: Headers) -> list[WarningValue]:
    return parse_warnings(h.lines_of("warning"))


def _retry_after(h: Headers) -> RetryAfter | None:
    value = h.get("retry-after")
    return None if value is None else parse_retry_after(value)


def _require(h: Headers) -> frozenset[str]:
    return parse_token_set(h.lines_of("require"))


def _proxy_require(h: Headers) -> frozenset[str]:
    return parse_token_set(h.lines_of("proxy-require"))


def _supported(h: Headers) -> frozenset[str]:
    return parse_token_set(h.lines_of("supported"))


# property name, cache key (the header's canonical name, or a key of its own), parser, type, docstring.
ACCESSORS: Final = (
    ("vias", "via", "_vias", "list[Via]", ""),
    ("from_", "from", "_from", "NameAddr", ""),
    ("to", "to", "_to", "NameAddr", ""),
    ("call_id", "call-id", "_call_id", "str", ""),
    ("cseq", "cseq", "_cseq", "CSeq", ""),
    ("contacts", "contact", "_contacts", "list[NameAddr]",
     "Contact values; `Contact: *` gives [] (and contact_star True)."),
    ("contact_star", "contact*", "_contact_star", "bool", ""),
    ("routes", "route", "_routes", "list[NameAddr]", ""),
    ("record_routes", "record-route", "_record_routes", "list[NameAddr]", ""),
    ("max_forwards", "max-forwards", "_max_forwards", "int | None", ""),
    ("expires", "expires", "_expires", "int | None", ""),
    ("content_length", "content-length", "_content_length", "int | None",
     "Content-Length as received (None if absent); serialize() recomputes it."),
    ("content_type", "content-type", "_content_type", "MediaType | None", ""),
    ("p_asserted_identities", "p-asserted-identity", "_pais", "list[NameAddr]", ""),
    ("p_preferred_identities", "p-preferred-identity", "_ppis", "list[NameAddr]", ""),
    ("privacy", "privacy", "_privacy", "frozenset[str]",
     'Privacy values (RFC 3323), lower-cased: e.g. {"id"}, {"none"}.'),
    ("reasons", "reason", "_reasons", "list[Reason]", ""),
    ("warnings", "warning", "_warnings", "list[WarningValue]", ""),
    ("retry_after", "retry-after", "_retry_after", "RetryAfter | None", ""),
    ("require", "require", "_require", "frozenset[str]", ""),
    ("proxy_require", "proxy-require", "_proxy_require", "frozenset[str]", ""),
    ("supported", "supported", "_supported", "frozenset[str]", ""),
)  # fmt: skip


class TypedHeaders:
    """The typed accessors over `headers` (Message's base)."""

    __slots__ = ("headers",)

    headers: Headers

    @property
    def identity(self) -> str | None:
        """The first Identity header (RFC 8224), opaque: not parsed, so not cached."""
        return self.headers.get("identity")

    # --- generated by scripts/generate_accessors from ACCESSORS: edit the table, not this ---
    @property
    def vias(self) -> list[Via]:
        h = self.headers
        value: list[Via] | None = h._cache.get("via")
        if value is None:
            value = h._cache["via"] = _vias(h)
        return value

    @property
    def from_(self) -> NameAddr:
        h = self.headers
        value: NameAddr | None = h._cache.get("from")
        if value is None:
            value = h._cache["from"] = _from(h)
        return value

    @property
    def to(self) -> NameAddr:
        h = self.headers
        value: NameAddr | None = h._cache.get("to")
        if value is None:
            value = h._cache["to"] = _to(h)
        return value

    @property
    def call_id(self) -> str:
        h = self.headers
        value: str | None = h._cache.get("call-id")
        if value is None:
            value = h._cache["call-id"] = _call_id(h)
        return value

    @property
    def cseq(self) -> CSeq:
        h = self.headers
        value: CSeq | None = h._cache.get("cseq")
        if value is None:
            value = h._cache["cseq"] = _cseq(h)
        return value

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; `Contact: *` gives [] (and contact_star True)."""
        h = self.headers
        value: list[NameAddr] | None = h._cache.get("contact")
        if value is None:
            value = h._cache["contact"] = _contacts(h)
        return value

    @property
    def contact_star(self) -> bool:
        h = self.headers
        value: bool | None = h._cache.get("contact*")
        if value is None:
            value = h._cache["contact*"] = _contact_star(h)
        return value

    @property
    def routes(self) -> list[NameAddr]:
        h = self.headers
        value: list[NameAddr] | None = h._cache.get("route")
        if value is None:
            value = h._cache["route"] = _routes(h)
        return value

    @property
    def record_routes(self) -> list[NameAddr]:
        h = self.headers
        value: list[NameAddr] | None = h._cache.get("record-route")
        if value is None:
            value = h._cache["record-route"] = _record_routes(h)
        return value

    @property
    def max_forwards(self) -> int | None:
        cache = self.headers._cache
        if "max-forwards" in cache:
            cached: int | None = cache["max-forwards"]
            return cached
        value: int | None = _max_forwards(self.headers)
        cache["max-forwards"] = value
        return value

    @property
    def expires(self) -> int | None:
        cache = self.headers._cache
        if "expires" in cache:
            cached: int | None = cache["expires"]
            return cached
        value: int | None = _expires(self.headers)
        cache["expires"] = value
        return value

    @property
    def content_length(self) -> int | None:
        """Content-Length as received (None if absent); serialize() recomputes it."""
        cache = self.headers._cache
        if "content-length" in cache:
            cached: int | None = cache["content-length"]
            return cached
        value: int | None = _content_length(self.headers)
        cache["content-length"] = value
        return value

    @property
    def content_type(self) -> MediaType | None:
        cache = self.headers._cache
        if "content-type" in cache:
            cached: MediaType | None = cache["content-type"]
            return cached
        value: MediaType | None = _content_type(self.headers)
        cache["content-type"] = value
        return value

    @property
    def p_asserted_identities(self) -> list[NameAddr]:
        h = self.headers
        value: list[NameAddr] | None = h._cache.get("p-asserted-identity")
        if value is None:
            value = h._cache["p-asserted-identity"] = _pais(h)
        return value

    @property
    def p_preferred_identities(self) -> list[NameAddr]:
        h = self.headers
        value: list[NameAddr] | None = h._cache.get("p-preferred-identity")
        if value is None:
            value = h._cache["p-preferred-identity"] = _ppis(h)
        return value

    @property
    def privacy(self) -> frozenset[str]:
        """Privacy values (RFC 3323), lower-cased: e.g. {"id"}, {"none"}."""
        h = self.headers
        value: frozenset[str] | None = h._cache.get("privacy")
        if value is None:
            value = h._cache["privacy"] = _privacy(h)
        return value

    @property
    def reasons(self) -> list[Reason]:
        h = self.headers
        value: list[Reason] | None = h._cache.get("reason")
        if value is None:
            value = h._cache["reason"] = _reasons(h)
        return value

    @property
    def warnings(self) -> list[WarningValue]:
        h = self.headers
        value: list[WarningValue] | None = h._cache.get("warning")
        if value is None:
            value = h._cache["warning"] = _warnings(h)
        return value

    @property
    def retry_after(self) -> RetryAfter | None:
        cache = self.headers._cache
        if "retry-after" in cache:
            cached: RetryAfter | None = cache["retry-after"]
            return cached
        value: RetryAfter | None = _retry_after(self.headers)
        cache["retry-after"] = value
        return value

    @property
    def require(self) -> frozenset[str]:
        h = self.headers
        value: frozenset[str] | None = h._cache.get("require")
        if value is None:
            value = h._cache["require"] = _require(h)
        return value

    @property
    def proxy_require(self) -> frozenset[str]:
        h = self.headers
        value: frozenset[str] | None = h._cache.get("proxy-require")
        if value is None:
            value = h._cache["proxy-require"] = _proxy_require(h)
        return value

    @property
    def supported(self) -> frozenset[str]:
        h = self.headers
        value: frozenset[str] | None = h._cache.get("supported")
        if value is None:
            value = h._cache["supported"] = _supported(h)
        return value

    # --- end of generated accessors ---
