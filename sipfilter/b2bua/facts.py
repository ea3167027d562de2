"""CallFacts from a new INVITE as the SIP core parsed it, and the B-leg's identities written from the very
same values: the number the policy checks is the number the carrier receives, byte for byte.

Reads typed values only (Request-URI, From, P-Asserted-Identity, Privacy lines); never splits header text by
hand, never decides (policy/ does), never sends. `sipfilter check` builds its facts here too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from sipfilter.policy.facts import CallFacts
from sipfilter.policy.numbers import ANONYMOUS, INVALID, Number, NumberReader
from sipfilter.sip.errors import ParseError
from sipfilter.sip.headers import NameAddr, parse_name_addr, parse_name_addrs, quote
from sipfilter.sip.message import Request
from sipfilter.sip.uri import USER_SAFE, SipUri, TelUri, Uri, escape, parse_uri

__all__ = [
    "CallIdentities",
    "Identity",
    "carries_numbers",
    "from_user",
    "from_value",
    "identities_from_text",
    "pai_values",
    "privacy_tokens",
    "read_address",
    "read_callee",
    "read_caller",
    "read_invite",
    "request_user",
]

ANONYMOUS_USER: Final = "anonymous"  # the user the B-leg presents for a withheld or unreadable caller


@dataclass(frozen=True, slots=True, init=False)
class Identity:
    """One identity of a call: the number the policy decides on, and what the B-leg writes for it."""

    number: Number
    user: str | None  # the user part the B-leg writes, unescaped (a sip user, or a tel number); None: none
    display: str | None  # the display name the B-leg writes (through sip.headers.quote); None: none
    tel: TelUri | None  # a tel: P-Asserted-Identity, relayed as the tel: URI it was

    def __init__(
        self, number: Number, user: str | None, display: str | None = None, tel: TelUri | None = None
    ) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        object.__setattr__(self, "number", number)
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "display", display)
        object.__setattr__(self, "tel", tel)


@dataclass(frozen=True, slots=True, init=False)
class CallIdentities:
    """The facts of one new INVITE and the identities they were read from (for the B-leg)."""

    facts: CallFacts
    callee: Identity
    caller: Identity
    asserted: tuple[Identity, ...]

    def __init__(
        self, facts: CallFacts, callee: Identity, caller: Identity, asserted: tuple[Identity, ...]
    ) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        object.__setattr__(self, "facts", facts)
        object.__setattr__(self, "callee", callee)
        object.__setattr__(self, "caller", caller)
        object.__setattr__(self, "asserted", asserted)


_NO_PRIVACY: Final[frozenset[str]] = frozenset()
# Display names that hold an address: a carrier parsing loosely could take a number from them.
_ADDRESS_LIKE: Final = re.compile(r"[<>@]|(?:sips?|tel):", re.IGNORECASE)


def read_invite(reader: NumberReader, trunk: str, msg: Request, now: float,
                zone_header: str | None = None) -> CallIdentities:  # fmt: skip
    """The facts of a validated new INVITE: callee from the Request-URI's user part only, caller from the URIs
    of From and of every P-Asserted-Identity (never a display name), the callee's own time zone from the
    trunk's `zone_header` when it has one (the policy validates it). Raises ParseError for a malformed
    P-Asserted-Identity (the request gets 400); an unreadable number is a fact (refused by the policy)."""
    callee = read_callee(reader, msg.request_uri)
    from_ = msg.from_
    caller = read_caller(reader, from_.uri, from_.display_name)
    pais = msg.p_asserted_identities
    asserted = tuple([read_caller(reader, na.uri, na.display_name) for na in pais]) if pais else ()
    lines = msg.headers.lines_of("privacy")
    facts = CallFacts(
        trunk,
        now,
        caller.number,
        tuple([a.number for a in asserted]) if asserted else (),
        privacy_tokens(lines) if lines else _NO_PRIVACY,
        callee.number,
        msg.call_id,
        (msg.headers.get(zone_header) or "") if zone_header else "",
    )
    return CallIdentities(facts, callee, caller, asserted)


def read_callee(reader: NumberReader, uri: Uri) -> Identity:
    """The callee: the Request-URI's user part exactly as the B-leg dials it, never another header. A URI
    without a user part, or with telephone-subscriber parameters other than phone-context (`;rn=`, `;isub=`…,
    which a carrier may act on), gives an INVALID number: refused as number.invalid."""
    if isinstance(uri, SipUri):
        user = uri.user
        if user is None:
            why = "no user part in the Request-URI: the number dialled must be its user part"
            return Identity(Number(f"{uri.scheme}:{uri.host}", "", INVALID, why), None)
        if ";" in user:
            names = [p.partition("=")[0].strip().lower() for p in user.split(";")[1:]]
            other = [n for n in names if n != "phone-context"]
            if other:
                name = other[0][:40]
                why = f"parameter {name!r} in the user part is refused" if name else "';' ends the user part"
                return Identity(Number(user, "", INVALID, why), user)
        return Identity(reader.callee(user, uri.host), user)
    if isinstance(uri, TelUri):
        return Identity(reader.callee(uri.number, "", uri.params.get("phone-context") or ""), uri.number)
    return Identity(Number(str(uri)[:80], "", INVALID, _no_number(uri)), None)


def read_caller(reader: NumberReader, uri: Uri, display: str | None = None) -> Identity:
    """A caller identity (From, one P-Asserted-Identity): the number of its URI's user part."""
    shown = display if display and not _ADDRESS_LIKE.search(display) and display.strip() else None
    if isinstance(uri, SipUri):
        user = uri.user
        if user is None:
            no_user = Number(f"{uri.scheme}:{uri.host}", "", ANONYMOUS, "no user part in the URI")
            return Identity(no_user, None, shown)
        return Identity(reader.caller(user, uri.host), user, shown)
    if isinstance(uri, TelUri):
        number = reader.caller(uri.number, "", uri.params.get("phone-context") or "")
        return Identity(number, uri.number, shown, uri)
    return Identity(Number(str(uri)[:80], "", INVALID, _no_number(uri)), None, shown)


def _no_number(uri: Uri) -> str:
    return f"a {uri.scheme}: URI holds no telephone number"


def privacy_tokens(values: Iterable[str]) -> frozenset[str]:
    """Privacy values (RFC 3323: priv-value *(";" priv-value)), lower-cased. Commas (lines joined by a proxy)
    and white space are read as separators too: a carrier may read them so, and a withheld identity must be
    seen whatever the spelling."""
    return frozenset(t.lower() for v in values for t in _PRIVACY_SEPARATORS.split(v) if t)


_PRIVACY_SEPARATORS: Final = re.compile(r"[;,\s]+")


# A body part of a type that carries its own called and calling party numbers (SIP-I/SIP-T ISUP, QSIG).
_NUMBERING_PART: Final = re.compile(rb"content-type:[ \t]*application/(?:isup|qsig)\b", re.IGNORECASE)


def carries_numbers(body: bytes) -> bool:
    """True when a (multipart) body holds an ISUP or QSIG part: its called party number is not the one the
    policy read, and a gateway may route on it. A loose scan (any such Content-Type line anywhere): refusing
    a body that merely mentions one is the safe error."""
    return _NUMBERING_PART.search(body) is not None


# --- what the B-leg writes ----------------------------------------------------------------------------------
def request_user(ids: CallIdentities) -> str:
    """The Request-URI (and To) user part of the B-leg, escaped (RFC 3261 §19.1.2): unescaped by the carrier,
    it is the very string the callee's number was read from. "" when the Request-URI had none."""
    user = ids.callee.user
    return escape(user, USER_SAFE) if user else ""


def from_value(ids: CallIdentities, host: str, tag: str) -> str:
    """The B-leg's From: the caller's user part at our host (topology hiding), its display name quoted."""
    caller = ids.caller
    name = f"{quote(caller.display)} " if caller.display else ""
    return f"{name}<sip:{escape(from_user(ids), USER_SAFE)}@{host}>;tag={tag}"


def from_user(ids: CallIdentities) -> str:
    """The user part (unescaped) of the B-leg's From: the caller's, or `anonymous` for a withheld one."""
    caller = ids.caller
    return caller.user if caller.user and caller.number.kind != ANONYMOUS else ANONYMOUS_USER


def pai_values(ids: CallIdentities, host: str) -> list[str]:
    """The B-leg's P-Asserted-Identity values: one per asserted identity that has a number, tel: URIs as they
    came, SIP users at our host (topology hiding); each exactly what its number was read from."""
    out: list[str] = []
    for a in ids.asserted:
        if a.user is None:
            continue  # no number in it: nothing to assert
        if a.number.kind == ANONYMOUS:
            uri = f"sip:{ANONYMOUS_USER}@{host}"
        elif a.tel is not None:
            uri = str(a.tel)
        else:
            uri = f"sip:{escape(a.user, USER_SAFE)}@{host}"
        out.append(f"{quote(a.display)} <{uri}>" if a.display else f"<{uri}>")
    return out


# --- `sipfilter check`: the same facts from command-line text ---------------------------------------------
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def _addresses(text: str, what: str, many: bool) -> list[tuple[Uri, str | None]] | None:
    """(URI, display name) of a name-addr or URI through the SIP core; None for a bare number."""
    if "<" not in text and not _SCHEME.match(text):
        return None
    try:
        if "<" not in text and not many:
            return [(parse_uri(text), None)]  # an addr-spec: the whole text is the URI
        found: Sequence[NameAddr] = parse_name_addrs([text]) if many else [parse_name_addr(text)]
    except ParseError as exc:
        raise ParseError(f"{what}: {text[:80]!r} is not a URI, name-addr or number ({exc.reason})") from None
    return [(na.uri, na.display_name) for na in found]


def read_address(reader: NumberReader, text: str, *, callee: bool = False, many: bool = False,
                 what: str = "") -> list[Identity]:  # fmt: skip
    """The identities of command-line text as a request carrying it would give: a URI or name-addr through the
    SIP core and the readers above (`many`: a header value listing several, as P-Asserted-Identity may, where
    an addr-spec's ';' starts header parameters), a bare number read as a URI's user part. ParseError (naming
    `what`) for text that is none of these."""
    text = text.strip()
    found = _addresses(text, what or ("callee" if callee else "caller"), many and not callee)
    if found is None:
        return [Identity(reader.callee(text) if callee else reader.caller(text), text)]
    if callee:
        return [read_callee(reader, found[0][0])]
    return [read_caller(reader, uri, display) for uri, display in found]


def identities_from_text(
    reader: NumberReader,
    trunk: str,
    from_: str,
    to: str,
    pai: Sequence[str] = (),
    privacy: Sequence[str] = (),
    at: float = 0.0,
    call_id: str = "",
    callee_zone: str = "",
) -> CallIdentities:
    """The CallIdentities of a new INVITE with these values (`sipfilter check`): see read_address."""
    (callee,) = read_address(reader, to, callee=True, what="callee")
    (caller,) = read_address(reader, from_, what="From")
    asserted = [a for v in pai for a in read_address(reader, v, many=True, what="P-Asserted-Identity")]
    facts = CallFacts(trunk, at, caller.number, tuple(a.number for a in asserted),
                      privacy_tokens(privacy), callee.number, call_id, callee_zone)  # fmt: skip
    return CallIdentities(facts, callee, caller, tuple(asserted))
