"""Builders of the bytes the B2BUA sends: requests and responses of both legs (identifiers: b2bua/ids.py).

Serialisation only, from strings the call logic hands in; never parses a message (the SIP core does that),
except the byte-level scan of a malformed request needed to answer it 400.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from sipfilter.b2bua.ids import local_user
from sipfilter.policy.verdict import Verdict
from sipfilter.sip.status import reason_phrase as reason_phrase  # re-exported: the B2BUA answers with it

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_NOT_USER = re.compile(r"[^0-9A-Za-z+*#._\-]")
_TAG_PARAM = re.compile(r";[ \t]*tag[ \t]*=", re.IGNORECASE)


def with_tag(name_addr: str, tag: str) -> str:
    """A From/To value with `;tag=` appended unless it already carries one: a header parameter, after the
    URI's closing `>` when it is bracketed (`;tag=` inside `<…>` is the URI's, in a display name text)."""
    params = name_addr[name_addr.rfind(">") + 1 :] if "<" in name_addr else name_addr
    if _TAG_PARAM.search(params) is not None:
        return name_addr
    return f"{name_addr};tag={tag}"


def uri_user(uri: object) -> str:
    """The user (or tel number) of a URI, reduced to characters that cannot change the URI we build."""
    user = getattr(uri, "user", None) or getattr(uri, "number", None) or ""
    return _NOT_USER.sub("", str(user))


def safe(value: str) -> str:
    """A header value that cannot inject a header: control characters (CR, LF, NUL…) become spaces."""
    if value.isascii() and value.isprintable():  # the usual value, checked in C without the regex
        return value
    return _UNSAFE.sub(" ", value) if _UNSAFE.search(value) else value


def _encode(head: str, body: bytes) -> bytes:
    data = head.encode("utf-8", "surrogateescape")
    return data + body if body else data


def build_request(method: str, ruri: str, lines: Iterable[str], body: bytes = b"") -> bytes:
    """`lines` are complete "Name: value" lines; Content-Length is computed here."""
    # One C-level join (the trailing "", "" end the head with an empty line).
    head = "\r\n".join([f"{method} {ruri} SIP/2.0", *lines, f"Content-Length: {len(body)}", "", ""])
    return _encode(head, body)


def via_prefix(transport: str, hostport: str) -> str:
    """Our Via line up to its branch: what peers echo at the top of their responses (and what the workers'
    kernel steering program looks for, sipfilter/workers/steering.py)."""
    return f"Via: SIP/2.0/{transport.upper()} {hostport};branch="


def contact_line(hostname: str, hostport: str, transport: str) -> str:
    """Our Contact: the remote target of every dialog we are in, so the Request-URI of the peers' requests
    in it. Its user part starts with the worker's mark (ids.local_user)."""
    return f"Contact: <sip:{local_user(hostname)}@{hostport};transport={transport}>"


def request_head(method: str, cseq: int, transport: str, hostport: str, branch: str, from_: str, to: str,
                 call_id: str, routes: Sequence[str] = (), max_forwards: int = 70) -> list[str]:
    """The head every request we send starts with, in RFC 3261 §8.1.1 order: our Via (rport asked),
    Max-Forwards, the Route set, From, To, Call-ID and CSeq. Callers append the rest (Contact, Reason, relayed
    headers)."""
    return [
        f"{via_prefix(transport, hostport)}{branch};rport",
        f"Max-Forwards: {max_forwards}",
        *[f"Route: {r}" for r in routes],
        f"From: {from_}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
    ]


def ack_for_non2xx(invite: bytes, to: str) -> bytes:
    """The ACK of a 3xx-6xx answer to an INVITE we built (RFC 3261 §17.1.1.3): the INVITE's Request-URI,
    top Via (so its branch), Route set, From, Call-ID and CSeq number, with the answer's To."""
    head = invite.split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape").split("\r\n")
    uri = head[0].split(" ", 2)[1]
    via = from_ = call_id = seq = ""
    routes: list[str] = []
    for line in head[1:]:  # our own head (request_head): canonical names, one value per line
        name, _, value = line.partition(": ")
        if name == "Via" and not via:
            via = value
        elif name == "Route":
            routes.append(value)
        elif name == "From":
            from_ = value
        elif name == "Call-ID":
            call_id = value
        elif name == "CSeq":
            seq = value.split(" ", 1)[0]
    lines = [f"Via: {via}", "Max-Forwards: 70", *[f"Route: {r}" for r in routes], f"From: {from_}",
             f"To: {safe(to)}", f"Call-ID: {call_id}", f"CSeq: {seq} ACK"]  # fmt: skip
    return build_request("ACK", uri, lines)


def build_response(status: int, reason: str, lines: Iterable[str], body: bytes = b"") -> bytes:
    start = f"SIP/2.0 {status} {safe(reason) or reason_phrase(status)}"
    return _encode("\r\n".join([start, *lines, f"Content-Length: {len(body)}", "", ""]), body)


def verdict_lines(verdict: Verdict, host: str) -> list[str]:
    return [f"Reason: {verdict.reason_header()}", f"Warning: {verdict.warning_header(host)}"]


# -- answering what the SIP core could not parse --------------------------------------------------------

_HEADER_LINE = re.compile(rb"^([A-Za-z][A-Za-z0-9\-.!%*_+`'~]*)[ \t]*:[ \t]*(.*)$")
_KEEP = {
    b"via": "Via", b"v": "Via", b"from": "From", b"f": "From", b"to": "To", b"t": "To",
    b"call-id": "Call-ID", b"i": "Call-ID", b"cseq": "CSeq",
}


def stateless_error(data: bytes, status: int, reason: str, tag: str) -> bytes | None:
    """A response to a request that failed to parse, from its raw header lines (those it has of Via,
    From, To, Call-ID, CSeq); None without a Via."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found: dict[str, list[str]] = {}
    for raw in head.split(b"\n")[1:]:
        line = raw.rstrip(b"\r")
        m = _HEADER_LINE.match(line)
        if m is None:
            continue
        name = _KEEP.get(m.group(1).lower())
        if name is None:
            continue
        value = m.group(2).decode("utf-8", "replace").strip()
        found.setdefault(name, []).append(safe(value))
    if "Via" not in found:
        return None  # §8.2: an answer goes back along the Via; without one it could not be matched
    lines = [f"Via: {v}" for v in found["Via"]]
    if "From" in found:
        lines.append(f"From: {found['From'][0]}")
    if "To" in found:
        lines.append(f"To: {with_tag(found['To'][0], tag)}")
    for name in ("Call-ID", "CSeq"):
        if name in found:
            lines.append(f"{name}: {found[name][0]}")
    return build_response(status, reason, lines)
