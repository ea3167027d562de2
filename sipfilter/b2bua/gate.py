"""The gate: what a request must pass before the B2BUA acts on it (RFC 3261 §8.2 UAS checks, digest
authentication, admission) and the stateless answers of those refused.
"""

from __future__ import annotations

import logging
from typing import Any

from sipfilter.b2bua import wire
from sipfilter.b2bua.auth import Passed
from sipfilter.b2bua.calls import (
    INSIDE,
    OUTSIDE,
    ServerTx,
    first_value,
    tag_of,
)
from sipfilter.b2bua.facts import carries_numbers
from sipfilter.b2bua.ids import new_tag
from sipfilter.b2bua.limits import REASON_UNKNOWN_SOURCE, Admit, Reject
from sipfilter.b2bua.plumbing import Plumbing
from sipfilter.config import TrunkConfig
from sipfilter.sip.message import Request
from sipfilter.transport.base import Addr, Endpoint

log = logging.getLogger("sipfilter.b2bua.core")  # one logger for the B2BUA, whichever room writes

# Option tags a dialer may Require: relayed end to end, so the carrier's support is what counts.
SUPPORTED_EXTENSIONS = frozenset({"100rel", "timer", "replaces", "precondition", "norefersub", "histinfo",
                                  "tdialog", "path", "outbound", "gruu", "from-change", "199"})  # fmt: skip
# No ISUP or QSIG, even as a multipart part: those bodies carry their own called and calling numbers, which a
# gateway may route on, and the policy reads the SIP headers only (b2bua/facts.py, carries_numbers).
ACCEPTED_BODIES = ("application/sdp", "multipart/mixed", "multipart/alternative")


class Gate(Plumbing):
    """Checks of new requests and the stateless answers refusing them."""

    def _malformed(self, ep: Endpoint, addr: Addr, exc: Any, data: bytes, msg: Any = None) -> None:
        self.obs.malformed(ep.transport)
        if not getattr(exc, "is_request", False) and msg is None:
            return
        if msg is not None and not msg.is_request:
            return  # a response: drop
        if getattr(exc, "method", None) == "ACK" or (msg is not None and msg.method == "ACK"):
            return
        if ep.side == INSIDE and self.rt.matcher.match(addr[0], port=addr[1]) is None:
            return  # unknown source: never answered
        if ep.side == OUTSIDE and not self._known_carrier(addr):
            return
        status = int(getattr(exc, "status", 400) or 400)
        reason = str(getattr(exc, "reason", "") or wire.reason_phrase(status))
        raw = data or getattr(exc, "raw", b"") or (bytes(msg) if msg is not None else b"")
        out = wire.stateless_error(raw, status, reason, new_tag()) if raw else None
        if out is not None:
            ep.send(out, addr)
            self.obs.response("", "sent", status)

    def _authenticated(self, ep: Endpoint, msg: Request, addr: Addr, trunk: TrunkConfig, now: float) -> bool:
        """Digest check of an out-of-dialog request on a trunk listed in `auth.trunks`; False when answered
        (407/401 challenge, 400 for malformed credentials) or dropped by the per-source rate limit."""
        gate = self.rt.auth
        if gate is None or not gate.applies(trunk.name):
            return True
        outcome = gate.check(msg, addr[0], now)
        self.obs.auth(trunk.name, outcome.result)
        if isinstance(outcome, Passed):
            return True
        # Refused attempts spend the source's rate budget (a flood guard), never the trunk's call budget.
        if not self._admitted(ep, msg, addr, self.admission.admit_request(addr[0], trunk.name, now)):
            return False
        if outcome.why not in ("missing", "stale"):
            log.info("digest authentication failed on trunk %s from %s: %s", trunk.name, addr[0], outcome.why)
        self._stateless(ep, addr, msg, outcome.status, outcome.reason, list(outcome.extra))
        self.obs.response(trunk.name, "sent", outcome.status)
        return False

    def _admitted(self, ep: Endpoint, msg: Request, addr: Addr, admit: Any) -> bool:
        """True for Admit; else counts the refusal and answers a Reject (503 + Retry-After) or drops."""
        if isinstance(admit, Admit):
            return True
        self.obs.overload(admit.reason)
        if isinstance(admit, Reject):
            extra = [f"Retry-After: {admit.retry_after}"] if admit.retry_after is not None else []
            self._stateless(ep, addr, msg, admit.status, "", extra)
        return False

    def _refused_by_uas_checks(self, ep: Endpoint, msg: Request, addr: Addr) -> bool:
        """RFC 3261 §8.2 checks a UAS makes before acting on a new request; True when answered."""
        tags = [t for t in (*msg.require, *msg.proxy_require) if t.lower() not in SUPPORTED_EXTENSIONS]
        if tags:
            self._stateless(ep, addr, msg, 420, "Bad Extension", [f"Unsupported: {', '.join(tags)}"])
            return True
        if msg.method != "INVITE":
            return False
        if msg.body:
            ctype = msg.content_type
            mime = ctype.mime if ctype is not None else ""
            if mime not in ACCEPTED_BODIES or (mime != "application/sdp" and carries_numbers(msg.body)):
                self._stateless(ep, addr, msg, 415, "Unsupported Media Type",
                                [f"Accept: {', '.join(ACCEPTED_BODIES)}"])  # fmt: skip
                return True
        accept = msg.headers.get_all("Accept")
        if accept:
            kinds = {a.split(";", 1)[0].strip().lower() for a in accept}
            if not kinds & {"application/sdp", "application/*", "*/*", ""}:
                self._stateless(ep, addr, msg, 406, "Not Acceptable", ["Accept: application/sdp"])
                return True
        return False

    def _outside_new_request(self, ep: Endpoint, msg: Request, addr: Addr) -> None:
        # Carriers may only talk inside dialogs we created; an OPTIONS ping from a target gets 200.
        if not self._known_carrier(addr):
            self.obs.unknown_source(ep.transport)
            self.obs.overload(REASON_UNKNOWN_SOURCE)
            return
        if not self._admitted(ep, msg, addr, self.admission.admit_peer(addr[0], self._clock())):
            return  # a carrier's address is capped like a dialer's
        if msg.method == "OPTIONS":
            self._stateless(ep, addr, msg, 200, "")
        else:
            self._stateless(ep, addr, msg, 403, "Forbidden")

    def _unknown_source(self, ep: Endpoint, msg: Request, addr: Addr) -> None:
        self.obs.unknown_source(ep.transport)
        decision = self.admission.admit_request(addr[0], None, self._clock())
        if not isinstance(decision, Admit):
            self.obs.overload(decision.reason)
        if isinstance(decision, Reject):
            self._stateless(ep, addr, msg, 403, "Forbidden")

    def _stateless(self, ep: Endpoint, addr: Addr, msg: Request, status: int, reason: str,
                   extra: list[str] | None = None) -> None:  # fmt: skip
        if msg.method == "ACK":
            return
        stx = ServerTx(msg, ep, addr, None, first_value(msg, "To"))
        lines = stx.lines(new_tag() if status > 100 and not tag_of(msg.to) else None)
        if extra:
            lines.extend(extra)
        ep.send(wire.build_response(status, reason or wire.reason_phrase(status), lines), addr)
