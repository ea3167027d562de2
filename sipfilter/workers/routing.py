"""Which worker owns a datagram: read from its raw bytes without parsing the message (`owner`), and from the
parsed message (`message_owner`), which decides.

Each worker reads its own socket of every listening address (SO_REUSEPORT). The kernel puts most datagrams
on their owner's socket (steering.py) and the rest on any worker's, which hands them over (`owner`). The
worker that then parses a datagram asks `message_owner`, the same rules over what the parser read, and hands
over what it does not own: the raw reading and the kernel's only save work, and a message that fools them
(a leading CRLF, `;tag=` inside the To URI) still reaches the owner of the callee the policy decides on.
Their owner:
- a response: the worker named in its top Via branch (the branches we send carry `MARK_PREFIX<index>.`);
  a response to a branch we never made has no owner (whoever read it answers for it: it matches nothing);
- a request whose To tag carries a worker mark (every in-dialog request: that tag is one we made, on either
  leg, and so is the tag of a non-2xx final response that an ACK echoes): that worker;
- any other request (a new INVITE, its CANCEL, an out-of-dialog request): the worker of the Request-URI's
  user, so every call to one callee is decided in one process and its frequency counters stay exact. The
  key is the number the last CALLEE_DIGITS digits of its decoded user make, modulo the workers: every spelling
  of one French number (0X…, +33X…, 0033X…, with separators or %-escapes) ends in the same digits, which are
  those of the number the policy decides on; phone numbers' last digits are spread evenly, and the kernel's
  steering program (steering.py) computes the same from the raw bytes of a user without escapes. A user with
  fewer digits is hashed.

Hostile input never raises and always gives the same owner for the same bytes: only the head is scanned,
fields are bounded, and CRC-32 (not Python's salted hash) makes the choice the same in every process.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import Any

from sipfilter.config.model import MAX_WORKERS
from sipfilter.sip.message import Message, Request
from sipfilter.sip.uri import SipUri, TelUri

MARK_PREFIX = "sfw"
MARK_DIGITS = len(str(MAX_WORKERS - 1))  # at most, in a worker mark's index
HEAD_LIMIT = 8192  # bytes scanned for the headers: the start line, Via and To come first in practice
CALLEE_DIGITS = 4  # 10,000 keys: no worker owns more than 2.5 % over an even share, up to 256 workers

_HEADER_END = b"\r\n\r\n"
_COOKIE = "z9hg4bk"  # RFC 3261's branch prefix, lower-cased
_VIA = re.compile(rb"\n(?:via|v)[ \t]*:[ \t]*([^\r\n]{0,2048})")
_TO = re.compile(rb"\n(?:to|t)[ \t]*:[ \t]*([^\r\n]{0,2048})")
_MARK = MARK_PREFIX.encode() + rb"([0-9]{1,%d})\." % MARK_DIGITS
_BRANCH = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*z9hg4bk" + _MARK)
_TAG = re.compile(rb";[ \t]*tag[ \t]*=[ \t]*" + _MARK)
_NOT_DIGIT = re.compile(rb"[^0-9]")
_ESCAPE = re.compile(rb"%([0-9a-f]{2})")  # lower-cased input
USER_SCAN = 1024  # bytes of an escaped user part decoded (a number's spelling is far shorter)


def _unescape(match: re.Match[bytes]) -> bytes:
    return bytes((int(match.group(1), 16),))


def worker_mark(index: int) -> str:
    """What begins every tag and branch worker `index` makes (after the branch's magic cookie)."""
    return f"{MARK_PREFIX}{index}."


def owner(data: bytes, workers: int) -> int | None:
    """The index (0..workers-1) of the worker that owns this datagram, or None when any may take it."""
    if workers <= 1:
        return 0
    head = data[:HEAD_LIMIT]
    end = head.find(_HEADER_END)
    if end >= 0:
        head = head[:end]
    head = head.lower()
    line_end = head.find(b"\r\n")
    start = head if line_end < 0 else head[:line_end]
    if start.startswith(b"sip/"):
        via = _VIA.search(head)
        if via is None:
            return None
        first = via.group(1).split(b",", 1)[0]
        mark = _BRANCH.search(first)
        return None if mark is None else int(mark.group(1)) % workers
    to = _TO.search(head)
    if to is not None:
        mark = _TAG.search(to.group(1))
        if mark is not None:
            return int(mark.group(1)) % workers
    return callee_owner(start, workers)


def number_owner(number: str, workers: int) -> int:
    """The worker that owns new requests to `number` (a store's key, E.164 in practice): the owner of
    `INVITE sip:<number>@… SIP/2.0`."""
    line = b"invite sip:" + number.lower().encode("utf-8", "surrogateescape") + b"@x sip/2.0"
    return callee_owner(line, workers)


def callee_owner(start_line: bytes, workers: int) -> int:
    """The worker of a request line's Request-URI user (see the module docstring); lower-cased input."""
    parts = start_line.split(b" ", 2)
    uri = parts[1] if len(parts) > 1 else b""
    colon = uri.find(b":")
    rest = uri[colon + 1 :] if colon >= 0 else uri
    at = rest.find(b"@")
    if at >= 0:
        user = rest[:at]
    else:  # tel: URIs and hosts: up to the first parameter
        semi = rest.find(b";")
        user = rest if semi < 0 else rest[:semi]
    if b"%" in user:  # the callee is read from the decoded user: `06123456%37%38` is 0612345678
        user = _ESCAPE.sub(_unescape, user[:USER_SCAN])
    return _user_owner(user, workers)


def _user_owner(user: bytes, workers: int) -> int:
    """The worker of a decoded, lower-cased Request-URI user."""
    user = user.split(b";", 1)[0][:256]  # user parameters (;npdi, ;rn=…) are not the number
    digits = _NOT_DIGIT.sub(b"", user)
    if len(digits) >= CALLEE_DIGITS:
        return int(digits[-CALLEE_DIGITS:]) % workers
    return zlib.crc32(digits or user) % workers


def message_owner(msg: Message, workers: int) -> int | None:
    """The owner of a parsed message, by the reading the B2BUA acts on: the parser's top Via branch, To tag
    and Request-URI user (the callee the policy decides on). `owner` guesses it from the raw bytes, and
    guesses right for every message the B2BUA writes and every usual spelling; where a hostile or unusual
    message makes them differ (a leading CRLF, `;tag=` inside the To URI), the worker that parsed it hands it
    to this owner. None: any worker may take it."""
    if workers <= 1:
        return 0
    if not isinstance(msg, Request):
        vias = msg.vias
        branch = (vias[0].branch or "").lower() if vias else ""
        mark = _mark_index(branch[len(_COOKIE) :]) if branch.startswith(_COOKIE) else None
        return None if mark is None else mark % workers
    mark = _mark_index((msg.to.tag or "").lower())
    if mark is not None:
        return mark % workers
    uri = msg.request_uri
    if isinstance(uri, SipUri):
        user = uri.user
    elif isinstance(uri, TelUri):
        user = uri.number
    else:
        user = None
    if user is None:
        return None
    return _user_owner(user.lower().encode("utf-8", "surrogateescape"), workers)


def _mark_index(text: str) -> int | None:
    """The worker index a tag or branch (after the magic cookie) begins with, lower-cased."""
    if not text.startswith(MARK_PREFIX):
        return None
    start = len(MARK_PREFIX)
    end = text.find(".", start, start + MARK_DIGITS + 1)
    digits = text[start:end] if end > start else ""
    return int(digits) if digits.isascii() and digits.isdigit() else None


class ParsedRouter:
    """The B2BUA's `route_parsed` hook in one of several workers: True when the message it parsed belongs to
    another worker (`message_owner`) and `hand_over(ep, data, addr, owner)` took it there. Compiled: the
    B2BUA asks it of every message."""

    def __init__(self, index: int, count: int, hand_over: Callable[[Any, bytes, Any, int], bool]) -> None:
        self.index = index
        self.count = count
        self.hand_over = hand_over

    def __call__(self, ep: Any, data: bytes, addr: Any, msg: Message) -> bool:
        try:
            owner = message_owner(msg, self.count)
        except Exception:  # a header that fails to parse: answered here, as any malformed message
            return False
        if owner is None or owner == self.index:
            return False
        return self.hand_over(ep, data, addr, owner)
