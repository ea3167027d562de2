"""Inside a call: requests relayed from one leg to the other (re-INVITE, UPDATE, PRACK, INFO, BYE…), their
responses relayed back, ACKs of re-INVITEs, and the dialer's CANCEL.
"""

from __future__ import annotations

import logging

from sipfilter.b2bua import wire
from sipfilter.b2bua.b_leg import BLeg
from sipfilter.b2bua.calls import (
    ANSWERED,
    CALLING,
    CONFIRMED,
    EARLY,
    ENDED,
    ENDING,
    INSIDE,
    OUTSIDE,
    Call,
    ClientTx,
    ServerTx,
    first_value,
    top_branch,
)
from sipfilter.b2bua.ids import new_branch
from sipfilter.b2bua.in_dialog import asserted_lines, refusal
from sipfilter.b2bua.topology import CONTENT_ONLY, NO_PASS, pick_headers
from sipfilter.sip.message import Message, Request, Response
from sipfilter.transport.base import Addr, Endpoint

log = logging.getLogger("sipfilter.b2bua.core")  # one logger for the B2BUA, whichever room writes


class Relay(BLeg):
    """In-dialog relay between the legs (which requests cross: b2bua/in_dialog.py)."""

    def _in_dialog(self, ep: Endpoint, msg: Request, addr: Addr) -> None:
        call_id = str(msg.call_id)
        if ep.side == INSIDE:
            call = self.calls_a.get(call_id)
            ok = call is not None and call.a.addr[0] == addr[0]
            to_side = OUTSIDE
        else:
            call = self.calls_b.get(call_id)
            ok = call is not None and call.b is not None and call.b.addr[0] == addr[0]
            to_side = INSIDE
        if call is None or not ok:
            if ep.side == OUTSIDE and not self._known_carrier(addr):
                return
            if ep.side == INSIDE and self.rt.matcher.match(addr[0], port=addr[1]) is None:
                return
            self._stateless(ep, addr, msg, 481, "")
            return
        method: str = msg.method
        to = first_value(msg, "To")
        stx = ServerTx(msg, ep, addr, call, to)
        leg = call.b if to_side == OUTSIDE else call.a
        if leg is None or (to_side == OUTSIDE and not leg.remote_tag) or call.state == ENDED:
            self._stateless(ep, addr, msg, 481 if method != "BYE" else 200, "")
            if method == "BYE":
                self._end(call, "bye")
            return
        self._file_server(stx, msg)
        refused = refusal(method)
        if refused is not None:  # REFER, MESSAGE, SUBSCRIBE…: answered, never relayed (b2bua/in_dialog.py)
            status, why = refused
            log.info("%s from the %s side refused on call %s: %s", method, ep.side, call.a.call_id, why)
            self._respond(stx, status, "", [f'Warning: 399 {self.hostname} "{why}"'], b"")
            return
        if method == "BYE":
            call.ended_by = "bye-" + ep.side
            self._cancel_timer(call, "max")
            if call.state in (CALLING, EARLY):  # BYE on an early dialog: the INVITE will not complete
                # §15.1.2: requests pending in the dialog get 487; the carrier's INVITE is cancelled.
                call.cancelled = True
                self._answer_a(call, 487, "Request Terminated", [])
                self._cancel_b(call)
                call.state = ENDING
            if ep.side == INSIDE and call.state == ANSWERED:
                self._send_b_ack(call, b"", [])
            if ep.side == INSIDE and call.trunk.objection_header is not None:
                self.objections.on_bye(self.rt.store, self.rt.audit, call.trunk, call.callee,
                                       msg.headers.get(call.trunk.objection_header), self._clock())
        if method == "INVITE" and to_side in call.reinvite:
            self._respond(stx, 491, "Request Pending", [], b"")
            return
        mf = msg.max_forwards
        if mf is not None and mf <= 0:
            self._respond(stx, 483, "Too Many Hops", [], b"")
            return
        leg.cseq += 1
        cseq = leg.cseq
        lep = leg.ep
        branch = new_branch()
        lines = wire.request_head(method, cseq, lep.transport, lep.hostport, branch, leg.local, leg.remote,
                                  leg.call_id, leg.routes, (mf if mf is not None else 70) - 1)  # fmt: skip
        if method in ("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"):
            lines.append(wire.contact_line(self.hostname, lep.hostport, lep.transport))
        if method == "PRACK":
            rack = first_value(msg, "RAck").split()
            if len(rack) == 3 and call.b_invite is not None and to_side == OUTSIDE:
                lines.append(f"RAck: {rack[0]} {call.b_invite.cseq} {rack[2]}")
            elif len(rack) == 3:
                lines.append(f"RAck: {rack[0]} {call.a_tx.cseq.split()[0]} {rack[2]}")
        passes = call.passes or NO_PASS
        drop = call.auth.ours if call.auth is not None and ep.side == INSIDE else None
        if to_side == OUTSIDE:  # the dialer's identity headers are replaced by the ones checked on the INVITE
            lines.extend(pick_headers(msg, passes.dialog_out, drop))
            if passes.allows("p-asserted-identity"):
                lines.extend(asserted_lines(msg, call.ids, self.hostname))
        else:
            lines.extend(pick_headers(msg, passes.dialog, drop))
        data = wire.build_request(method, leg.target, lines, msg.body or b"")
        # A BYE cannot fail (§15.1.2): answer it at once, not when the other leg does. A dead carrier would
        # hold the dialer for 64*T1, just when its own Timer F gives up; the B-leg BYE is now our own.
        origin = None if method == "BYE" else stx
        ctx = ClientTx(call, to_side, method, cseq, branch, data, lep, leg.addr, origin)
        if origin is not None:
            # Answered when the other leg answers (or its transaction times out): bounded all the same.
            stx.guard = self._later(64 * self.rt.timers.t1, self._unanswered, stx)
        if method == "INVITE":
            call.reinvite[to_side] = cseq
            # 100 Trying at once (§17.2.1): the sender then waits for our final answer (408 after 64*T1 if
            # the other leg is dead) instead of its own Timer B firing just when we answer.
            self._server_send(stx, wire.build_response(100, "Trying", stx.lines(None)), 100)
        self._send_client(ctx)
        if method == "BYE":
            self._respond(stx, 200, "OK", [], b"")

    def _relay_response(self, call: Call, ctx: ClientTx, msg: Response) -> None:
        stx = ctx.origin
        if stx is None:
            return
        status: int = msg.status
        extra = self._response_headers(call, msg, ctx.side == INSIDE)
        if ctx.method in ("INVITE", "UPDATE", "SUBSCRIBE") and 200 <= status < 300:
            sep = stx.ep
            extra.append(wire.contact_line(self.hostname, sep.hostport, sep.transport))
        if ctx.method == "INVITE" and status >= 300:
            call.reinvite.pop(ctx.side, None)
        if ctx.method == "INVITE" and 200 <= status < 300:
            # The ACK from the re-INVITE's originator is relayed to the other leg with this CSeq.
            pass
        self._relay_response_to(stx, status, str(msg.reason), extra, msg.body or b"")

    def _relay_response_to(self, stx: ServerTx, status: int, reason: str, extra: list[str],
                           body: bytes) -> None:  # fmt: skip
        self._respond(stx, status, reason, extra, body)

    def _on_ack(self, ep: Endpoint, msg: Request, addr: Addr) -> None:
        call_id = str(msg.call_id)
        if ep.side == INSIDE:
            call = self.calls_a.get(call_id)
            if call is None or call.a.addr[0] != addr[0]:
                return
            if call.state == ANSWERED and call.a_2xx:
                self._cancel_timer(call, "resend_2xx")
                self._cancel_timer(call, "no_ack")
                call.state = CONFIRMED
                call.a_2xx = b""
                self._send_b_ack(call, msg.body or b"", self._pick_content(msg))
                return
            if self._acked_non2xx(msg, addr):
                return
            if call.state == CONFIRMED and OUTSIDE in call.reinvite:
                self._relay_reinvite_ack(call, OUTSIDE, msg)
                return
            if call.state == ENDING and call.a_tx.final >= 300:
                # The ACK of our non-2xx on another branch than the INVITE's: its transaction takes it all
                # the same (Timer I absorbs retransmitted ACKs, then the call is forgotten).
                self._server_request(call.a_tx, msg)
            return
        call = self.calls_b.get(call_id)
        if call is None or call.b is None or call.b.addr[0] != addr[0]:
            return
        if self._acked_non2xx(msg, addr):
            return
        if INSIDE in call.reinvite:
            self._relay_reinvite_ack(call, INSIDE, msg)

    def _acked_non2xx(self, msg: Request, addr: Addr) -> bool:
        """An ACK of a non-2xx answer of ours (same branch as its INVITE, §17.1.1.3): its INVITE server
        transaction takes it (stops Timer G, absorbs retransmissions in Confirmed). An ACK of a 2xx is the
        dialog's (RFC 6026), matching none."""
        branch = top_branch(msg)
        stx = self.server_tx.get(branch) if branch else None
        if stx is None or stx.method != "INVITE" or stx.addr != addr or stx.final < 300:
            return False
        self._server_request(stx, msg)
        return True

    def _pick_content(self, msg: Message) -> list[str]:
        return pick_headers(msg, CONTENT_ONLY)

    def _relay_reinvite_ack(self, call: Call, to_side: str, msg: Request) -> None:
        cseq = call.reinvite.pop(to_side)
        leg = call.b if to_side == OUTSIDE else call.a
        if leg is None:
            return
        ep = leg.ep
        lines = wire.request_head("ACK", cseq, ep.transport, ep.hostport, new_branch(), leg.local, leg.remote,
                                  leg.call_id, leg.routes)  # fmt: skip
        lines.extend(self._pick_content(msg))
        ep.send(wire.build_request("ACK", leg.target, lines, msg.body or b""), leg.addr)

    def _on_cancel(self, ep: Endpoint, msg: Request, addr: Addr, branch: str) -> None:
        stx = self.server_tx.get(branch)
        if stx is None or stx.method != "INVITE" or stx.addr[0] != addr[0] or stx.call is None:
            self._stateless(ep, addr, msg, 481, "")
            return
        self._stateless(ep, addr, msg, 200, "OK")
        call = stx.call
        if stx.final:
            return  # too late: the INVITE already has its final answer
        call.cancelled = True
        call.ended_by = "cancel"
        reason = first_value(msg, "Reason")
        self._answer_a(call, 487, "Request Terminated", [])
        self._cancel_b(call, reason)
