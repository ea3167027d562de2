"""A call's life towards its end: the final answer to the dialer's INVITE (a 2xx retransmitted by the dialog
until its ACK, RFC 6026; a non-2xx by the INVITE server transaction), the ACK of the carrier's 2xx, BYE, the
ring and duration timers, and forgetting the call.
"""

from __future__ import annotations

import logging

from sipfilter.b2bua import wire
from sipfilter.b2bua.calls import (
    ANSWERED,
    CALLING,
    CONFIRMED,
    DECIDING,
    EARLY,
    ENDED,
    ENDING,
    INSIDE,
    OUTSIDE,
    Call,
    ClientTx,
    Leg,
    ServerTx,
    local_tag,
)
from sipfilter.b2bua.ids import new_branch
from sipfilter.b2bua.transactions import Transactions
from sipfilter.b2bua.wheel import cancel

log = logging.getLogger("sipfilter.b2bua.core")  # one logger for the B2BUA, whichever room writes


class Lifecycle(Transactions):
    """Answering the dialer, hanging up and forgetting calls."""

    def _answer_a(self, call: Call, status: int, reason: str, extra: list[str]) -> None:
        """A final response of our own making to the dialer's INVITE (reject, 408, 487, 503…)."""
        if call.a_tx.final or call.state == ENDED:
            return
        lines = call.a_tx.lines(local_tag(call.a))
        lines.extend(extra)
        data = wire.build_response(status, reason or wire.reason_phrase(status), lines)
        self.obs.invite_final(call.trunk.name, self._clock() - call.started)
        self._final_to_a(call, status, data)

    def _final_to_a(self, call: Call, status: int, data: bytes) -> None:
        """Send the INVITE's final answer to the dialer. A non-2xx: its transaction retransmits it on UDP
        until the ACK (Timers G/H/I). A 2xx: the dialog does (§13.3.1.4, RFC 6026), until the ACK or 64*T1."""
        stx = call.a_tx
        self._server_send(stx, data, status)
        self.obs.response(call.trunk.name, "sent", status)
        if status >= 300:
            call.state = ENDING
            self._cancel_timer(call, "ring")
            return
        call.a_2xx = data
        t = self.rt.timers
        if not call.a.ep.reliable:
            call.timers["resend_2xx"] = self._later(t.t1, self._retransmit_2xx, call, t.t1)
        call.timers["no_ack"] = self._later(64 * t.t1, self._no_ack, call)

    def _retransmit_2xx(self, call: Call, interval: float) -> None:
        call.timers.pop("resend_2xx", None)
        if call.state == ENDED or not call.a_2xx:
            return
        self.obs.retransmission("sent")
        self._server_send(call.a_tx, call.a_2xx, 200)  # through its transaction (Accepted lets it pass)
        nxt = min(interval * 2, self.rt.timers.t2)
        call.timers["resend_2xx"] = self._later(nxt, self._retransmit_2xx, call, nxt)

    def _no_ack(self, call: Call) -> None:
        call.timers.pop("no_ack", None)
        self._cancel_timer(call, "resend_2xx")
        if call.state == ANSWERED:  # 2xx never acknowledged: hang up both legs (§13.3.1.4)
            log.info("no ACK for 2xx on call %s: hanging up", call.a.call_id)
            self._send_b_ack(call, b"", [])
            self._send_bye(call, OUTSIDE)
            self._send_bye(call, INSIDE)
            call.ended_by = "no-ack"
            self._end_soon(call)
            return
        self._end(call, call.ended_by or "final")

    def _server_ended(self, stx: ServerTx, timed_out: bool) -> None:
        """A server transaction is over. The dialer's INVITE answered with a non-2xx: its ACK came (and
        Timer I ran) or never did (Timer H); either way the call is over."""
        call = stx.call
        if call is not None and call.a_tx is stx and stx.final >= 300:
            self._end(call, call.ended_by or "final")
        self._forget_server(stx)

    def _send_b_ack(self, call: Call, body: bytes, extra: list[str], fork: Leg | None = None) -> bytes:
        """ACK the carrier's 2xx on the call's B-leg (or on `fork`, another dialog of the INVITE)."""
        b = call.b if fork is None else fork
        if b is None or not b.remote_tag:
            return b""
        ep = b.ep
        cseq = call.b_invite.cseq if call.b_invite else b.cseq
        lines = wire.request_head("ACK", cseq, ep.transport, ep.hostport, new_branch(), b.local, b.remote,
                                  b.call_id, b.routes)  # fmt: skip
        lines.extend(extra)
        ack = wire.build_request("ACK", b.target, lines, body)
        if fork is None:
            call.b_ack = ack
        ep.send(ack, b.addr)
        return ack

    def _send_bye(self, call: Call, side: str, fork: Leg | None = None) -> None:
        leg = fork if fork is not None else call.b if side == OUTSIDE else call.a
        if leg is None or (side == OUTSIDE and not leg.remote_tag):
            return
        leg.cseq += 1
        ep = leg.ep
        branch = new_branch()
        lines = wire.request_head("BYE", leg.cseq, ep.transport, ep.hostport, branch, leg.local, leg.remote,
                                  leg.call_id, leg.routes)  # fmt: skip
        lines.append(f'Reason: SIP;cause=200;text="{call.ended_by or "hangup"}"')
        ctx = ClientTx(None, side, "BYE", leg.cseq, branch, wire.build_request("BYE", leg.target, lines),
                       ep, leg.addr, None)  # fmt: skip
        self._send_client(ctx)

    def _end_soon(self, call: Call) -> None:
        if call.state == ENDED:
            return  # already forgotten: never revive it (its slot and gauge were released once)
        call.state = ENDING
        if "end" not in call.timers:
            call.timers["end"] = self._later(self.rt.timers.t4, self._end, call, call.ended_by or "ended")

    def _cancel_timer(self, call: Call, name: str) -> None:
        cancel(call.timers.pop(name, None))

    def _end(self, call: Call, why: str) -> None:
        """Forget a call for good: indexes, timers, admission slot, gauge. Idempotent."""
        if call.state == ENDED:
            return
        call.state = ENDED
        for handle in call.timers.values():
            cancel(handle)
        call.timers.clear()
        if self.calls_a.get(call.a.call_id) is call:
            del self.calls_a[call.a.call_id]
        if call.b is not None and self.calls_b.get(call.b.call_id) is call:
            del self.calls_b[call.b.call_id]
        stx = call.a_tx
        if self.server_tx.get(stx.branch) is not stx:
            stx.call = None  # its transaction is over: break the call <-> transaction cycle (_forget_client)
        elif not stx.final:
            # Unanswered (its machine has nothing left to end it): absorb INVITE retransmissions briefly.
            # An answered one ends with its machine's timers (H/I, or L in Accepted).
            self._later(self.rt.timers.t4, self._forget_server, stx)
        ctx = call.b_invite
        if ctx is not None and self.client_tx.get(ctx.branch) is ctx:
            if ctx.timeout is None and not ctx.timers:  # nothing left to end it: forget it now
                self._stop_client(ctx)
            elif not ctx.final:
                # Still pending at the carrier: CANCEL it now if it rang, else on its first provisional;
                # its Timer B/C guard drops the transaction if the carrier never answers.
                call.cancelled = True
                self._cancel_b(call)
        self.admission.release(call.slot)
        call.slot = None
        self.obs.dialogs(call.trunk.name, -1)
        log.debug("call %s ended: %s", call.a.call_id, why)

    def _ring_timeout(self, call: Call) -> None:
        call.timers.pop("ring", None)
        if call.state in (DECIDING, CALLING, EARLY) and not call.a_tx.final:
            log.info("ring timeout on call %s", call.a.call_id)
            call.cancelled = True
            call.ended_by = "ring-timeout"
            self._answer_a(call, 408, "Request Timeout", [])
            self._cancel_b(call, 'SIP;cause=408;text="ring timeout"')
            ctx = call.b_invite
            if ctx is not None and not ctx.provisional:
                self._stop_client(ctx)

    def _max_duration(self, call: Call) -> None:
        call.timers.pop("max", None)
        if call.state in (ANSWERED, CONFIRMED):
            log.info("maximum call duration reached on call %s", call.a.call_id)
            call.ended_by = "max-duration"
            self._send_bye(call, OUTSIDE)
            self._send_bye(call, INSIDE)
            self._end_soon(call)
