"""The B-leg: the INVITE to the carrier (failover between its targets, the move to TCP of a large one), its
responses relayed to the dialer, forks, CANCEL and Timer C.
"""

from __future__ import annotations

import logging

from sipfilter.b2bua import wire
from sipfilter.b2bua.calls import (
    ANSWERED,
    CALLING,
    CONFIRMED,
    EARLY,
    ENDED,
    ENDING,
    OUTSIDE,
    Call,
    ClientTx,
    Leg,
    cancel_of,
    local_tag,
    tag_of,
)
from sipfilter.b2bua.facts import from_value, pai_values, request_user
from sipfilter.b2bua.identity import STIR_STATUSES, b_leg_identity, count_carrier_verdict
from sipfilter.b2bua.ids import new_branch, new_call_id, new_tag
from sipfilter.b2bua.in_dialog import asserted_lines
from sipfilter.b2bua.lifecycle import Lifecycle
from sipfilter.b2bua.topology import NO_PASS, pick_headers
from sipfilter.b2bua.transactions import UDP_MAX_REQUEST
from sipfilter.b2bua.trunks import (
    Destination,
    tcp_twin,
)
from sipfilter.sip.message import Request, Response
from sipfilter.transport.base import Endpoint

log = logging.getLogger("sipfilter.b2bua.core")  # one logger for the B2BUA, whichever room writes

FINAL_FAILOVER = frozenset({408, 503})
MAX_FORKS = 16  # extra dialogs of one INVITE we ACK and BYE; beyond, a carrier bug or an attack


class BLeg(Lifecycle):
    """The call towards the carrier, from its INVITE to its answer."""

    def _start_b_leg(self, call: Call, msg: Request | None) -> None:
        """The B-leg INVITE to the next target of the plan: `msg` is the A-leg INVITE, None on failover (the
        first B-leg kept it in `call.invite_msg`)."""
        msg = msg if msg is not None else call.invite_msg
        assert msg is not None
        ep = None
        while call.plan and ep is None:  # skip targets whose transport we do not listen on
            dest = call.plan.pop(0)
            ep = self.endpoint_for(OUTSIDE, dest.transport)
        if ep is None:
            self._answer_a(call, 503, "Service Unavailable", [])
            return
        call.dest = dest
        host = self.hostname
        ids = call.ids
        assert ids is not None  # set by _decide before any B-leg
        # The callee's and caller's user parts exactly as the policy read them (b2bua/facts.py).
        user = request_user(ids)
        call.invite_ruri = f"sip:{user}@{dest.uri_host}" if user else f"sip:{dest.uri_host}"
        to = f"<sip:{user}@{dest.uri_host}>" if user else f"<sip:{dest.uri_host}>"
        if call.b is None:
            b_call_id = new_call_id(host)
            local = from_value(ids, host, new_tag())
            call.b = Leg(ep, dest.addr, b_call_id, local, to, call.invite_ruri, 1)
            self.calls_b[b_call_id] = call
            call.invite_msg = msg  # kept for failover to the next target; dropped when answered
            crossing = call.passes or NO_PASS
            if call.identity is not None or (crossing.identity and "Identity" in msg.headers):
                call.b_identity = b_leg_identity(call.identity, msg, ids, crossing.identity,
                                                 crossing.allows("p-asserted-identity"), self.rt.store,
                                                 self._clock(), self.obs, call.trunk.name)  # fmt: skip
        else:
            b = call.b
            b.ep, b.addr = ep, dest.addr
            b.target = call.invite_ruri
            b.remote = to
            b.remote_tag = ""
            b.cseq += 1
        b = call.b
        mf = msg.max_forwards
        branch = new_branch()
        lines = wire.request_head("INVITE", b.cseq, ep.transport, ep.hostport, branch, b.local, b.remote,
                                  b.call_id, (), (mf if mf is not None else 70) - 1)  # fmt: skip
        lines.append(wire.contact_line(host, ep.hostport, ep.transport))
        passes = call.passes
        passes = passes or NO_PASS
        pai = passes.allows("p-asserted-identity")
        identity = call.b_identity
        allow = passes.invite if identity is None else passes.invite_sans_identity
        lines.extend(pick_headers(msg, allow, call.auth.ours if call.auth is not None else None))
        if pai:
            lines.extend(f"P-Asserted-Identity: {v}" for v in pai_values(ids, host))
        if identity:
            lines.extend(identity)
        body = msg.body or b""
        data = wire.build_request("INVITE", call.invite_ruri, lines, body)
        if not ep.reliable and len(data) > UDP_MAX_REQUEST:
            ep, dest, data = self._large_invite(call, ep, dest, data)
            b.ep = ep
        ctx = ClientTx(call, OUTSIDE, "INVITE", b.cseq, branch, data, ep, dest.addr, call.a_tx)
        ctx.dest = dest
        ctx.sent_at = self._clock()
        call.b_invite = ctx
        call.state = CALLING
        self._send_client(ctx)

    def _large_invite(self, call: Call, ep: Endpoint, dest: Destination,
                      data: bytes) -> tuple[Endpoint, Destination, bytes]:  # fmt: skip
        """RFC 3261 §18.1.1: a request over 1300 bytes (path MTU unknown) goes over a congestion-controlled
        transport. When the trunk lists the same carrier address over TCP and we have a TCP listener outside,
        the INVITE (and so the dialog) moves there, its Via and Contact saying so; else it stays on UDP (and
        is counted by _send_client): the carrier offers no other way."""
        tcp = self.endpoint_for(OUTSIDE, "tcp")
        twin = tcp_twin(self.rt.pools.get(call.trunk.name), dest)
        if tcp is None or twin is None:
            return ep, dest, data
        # The Via and the Contact name the transport and our address on it (both built by _start_b_leg).
        for old, new in ((f"SIP/2.0/UDP {ep.hostport};", f"SIP/2.0/TCP {tcp.hostport};"),
                         (f"@{ep.hostport};transport=udp>", f"@{tcp.hostport};transport=tcp>")):  # fmt: skip
            data = data.replace(old.encode(), new.encode(), 1)
        call.dest = twin
        self.obs.large_request("tcp")
        return tcp, twin, data

    def _b_invite_failed(self, call: Call, ctx: ClientTx, status: int) -> None:
        trunk = call.trunk.name
        if ctx.dest is not None and status in (408, 503) and trunk in self.rt.pools:
            self.rt.pools[trunk].mark(ctx.dest, False, self._clock())
        if status in FINAL_FAILOVER and call.plan and not call.cancelled and call.state in (CALLING, EARLY):
            self.obs.failover(trunk, ctx.dest.name if ctx.dest else "")
            self._start_b_leg(call, None)
            return
        self._answer_a(call, status, "", [])

    def _carrier_final(self, call: Call, ctx: ClientTx, status: int) -> None:
        if ctx.dest is not None:
            self.obs.carrier_final(call.trunk.name, ctx.dest.name, status, self._clock() - ctx.sent_at)

    def _b_invite_response(self, call: Call, ctx: ClientTx, msg: Response, status: int) -> None:
        b = call.b
        assert b is not None
        if not ctx.final and (status in STIR_STATUSES or "Reason" in msg.headers):  # a STIR verdict?
            count_carrier_verdict(self.obs, call.trunk.name, ctx.dest.name if ctx.dest else "", msg, status)
        if status < 200:
            if ctx.final:
                return  # a provisional straggling behind the final answer
            ctx.provisional = True  # Proceeding: the transaction stopped retransmitting and Timer B
            if ctx.cancel is None:  # Timer C (re)starts; after a CANCEL its 64*T1 guard runs on
                self._stop_guard(ctx)
                ctx.timeout = self._later(self.rt.timers.timer_c, self._timer_c, ctx)
            if call.cancelled or call.state == ENDED:
                call.cancelled = True
                self._cancel_b(call)
                return
            if status == 100:
                return
            self._learn_b_dialog(b, msg)
            if call.state in (CALLING, EARLY):
                call.state = EARLY
                self._relay_invite_response(call, msg, status)
            return
        # final: the transaction ACKed a non-2xx and keeps absorbing retransmissions (Timer D); after a 2xx
        # it passes on its retransmissions for 64*T1 (RFC 6026 Accepted, Timer M), which we ACK again.
        self._stop_guard(ctx)
        if not ctx.final:  # the first one; not a 2xx retransmission
            self._carrier_final(call, ctx, status)
        if status < 300:
            if not ctx.final:
                ctx.final = status
            self._b_2xx(call, ctx, msg)
            return
        ctx.final = ctx.final or status
        if ctx.dest is not None and call.trunk.name in self.rt.pools:
            self.rt.pools[call.trunk.name].mark(ctx.dest, status != 503, self._clock())
        if call.state in (ENDED, ENDING) or call.cancelled:
            return
        if status in FINAL_FAILOVER and call.plan:
            self._b_invite_failed(call, ctx, status)
            return
        self._relay_invite_response(call, msg, status)

    def _learn_b_dialog(self, b: Leg, msg: Response) -> None:
        tag = tag_of(msg.to)
        if tag and tag != b.remote_tag:
            b.remote_tag = tag
            b.remote = wire.with_tag(b.remote.split(";tag=")[0], tag)
        contacts = msg.contacts
        if contacts:
            b.target = str(contacts[0].uri)
        rrs = msg.record_routes
        if rrs:
            b.routes = [str(r) for r in reversed(rrs)]

    def _b_2xx(self, call: Call, ctx: ClientTx, msg: Response) -> None:
        b = call.b
        assert b is not None
        tag = tag_of(msg.to)
        if tag and b.remote_tag and tag != b.remote_tag and (call.state >= ANSWERED or call.cancelled):
            self._end_fork(call, ctx, msg, tag)
            return
        if call.state in (ANSWERED, CONFIRMED, ENDING, ENDED) or call.cancelled:
            if call.b_ack:  # 2xx retransmission: our ACK was lost
                b.ep.send(call.b_ack, b.addr)
                return
            if call.state in (ANSWERED,):
                return
            # A 2xx after CANCEL (race) or after the call ended: acknowledge it and hang up.
            self._learn_b_dialog(b, msg)
            self._send_b_ack(call, b"", [])
            self._send_bye(call, OUTSIDE)
            self._end_soon(call)
            return
        self._learn_b_dialog(b, msg)
        call.state = ANSWERED
        call.answered_at = self._clock()
        call.invite_msg = None
        self._cancel_timer(call, "ring")
        if ctx.dest is not None and call.trunk.name in self.rt.pools:
            self.rt.pools[call.trunk.name].mark(ctx.dest, True, call.answered_at)
        self.obs.answered(call.trunk.name)
        self._relay_invite_response(call, msg, msg.status)
        call.timers["max"] = self._later(self.rt.timers.max_duration, self._max_duration, call)

    def _end_fork(self, call: Call, ctx: ClientTx, msg: Response, tag: str) -> None:
        """A 2xx from another fork than the one the call went on (a second dialog, RFC 3261 §13.2.2.4):
        acknowledged, then hung up at once; a retransmission of it gets the same ACK again."""
        b = call.b
        assert b is not None
        forks = call.forks if call.forks is not None else {}
        call.forks = forks
        ack = forks.get(tag)
        if ack is not None:
            b.ep.send(ack, b.addr)
            return
        if len(forks) >= MAX_FORKS:
            return  # a carrier answering from ever more forks: the rest time out at its end
        fork = Leg(b.ep, b.addr, b.call_id, b.local, wire.with_tag(b.remote.split(";tag=")[0], tag), b.target,
                   ctx.cseq)  # fmt: skip
        self._learn_b_dialog(fork, msg)
        log.info("call %s: 2xx from a second fork of the carrier (tag %s): ACK and BYE", call.a.call_id,
                 wire.safe(tag)[:40])  # fmt: skip
        forks[tag] = self._send_b_ack(call, b"", [], fork)
        self._send_bye(call, OUTSIDE, fork)

    def _relay_invite_response(self, call: Call, msg: Response, status: int) -> None:
        a = call.a
        stx = call.a_tx
        lines = stx.lines(local_tag(a))
        ep = a.ep
        if status < 300:
            lines.append(wire.contact_line(self.hostname, ep.hostport, ep.transport))
        lines.extend(self._response_headers(call, msg))
        data = wire.build_response(status, str(msg.reason), lines, msg.body or b"")
        if status >= 200:
            self.obs.invite_final(call.trunk.name, self._clock() - call.started)
            self._final_to_a(call, status, data)
            return
        self._server_send(stx, data, status)
        self.obs.response(call.trunk.name, "sent", status)

    def _response_headers(self, call: Call, msg: Response, outward: bool = False) -> list[str]:
        """Headers a relayed response carries; `outward`: from the dialer to the carrier (its identity
        headers replaced by the ones checked on the INVITE)."""
        passes = call.passes or NO_PASS
        if not outward:
            return pick_headers(msg, passes.dialog)
        lines = pick_headers(msg, passes.dialog_out)
        if passes.allows("p-asserted-identity"):
            lines.extend(asserted_lines(msg, call.ids, self.hostname))
        return lines

    def _cancel_b(self, call: Call, reason: str = "") -> None:
        ctx = call.b_invite
        if ctx is None or call.b is None or self.client_tx.get(ctx.branch) is not ctx:
            return
        if not ctx.provisional or ctx.final:
            return  # §9.1: CANCEL only after a provisional; sent when one arrives (cancelled flag)
        if ctx.cancel is not None:
            return
        b = call.b
        lines = wire.request_head("CANCEL", ctx.cseq, ctx.ep.transport, ctx.ep.hostport, ctx.branch, b.local,
                                  b.remote.split(";tag=")[0], b.call_id)  # fmt: skip
        if reason:
            lines.append(f"Reason: {wire.safe(reason)}")
        data = wire.build_request("CANCEL", call.invite_ruri, lines)
        cancel = ClientTx(call, OUTSIDE, "CANCEL", ctx.cseq, ctx.branch + ".c", data, ctx.ep, ctx.addr, None)
        ctx.cancel = cancel
        # §9.1: no final answer 64*T1 after the CANCEL and the INVITE transaction is given up.
        self._stop_guard(ctx)
        ctx.timeout = self._later(64 * self.rt.timers.t1, self._timer_c, ctx)
        # CANCEL shares the INVITE's branch on the wire; filed apart so the INVITE stays matched. Its own
        # transaction timing out (Timer F) ends the call (_cancel_gone).
        self._send_client(cancel)

    def _timer_c(self, ctx: ClientTx) -> None:
        """A B-leg INVITE with no final answer in time: CANCEL it if not done yet, else give it up."""
        if self.client_tx.get(ctx.branch) is not ctx:
            return
        ctx.timeout = None
        call = ctx.call
        if ctx.final or call is None:
            self._stop_client(ctx)
            return
        if ctx.cancel is None:
            if call.state in (CALLING, EARLY) and not call.cancelled and not call.a_tx.final:
                self._ring_timeout(call)  # 408 to the dialer and CANCEL to the carrier
            else:
                call.cancelled = True
                self._cancel_b(call, 'SIP;cause=408;text="no final answer"')
            if cancel_of(ctx) is not None:  # (read again: _ring_timeout or _cancel_b may have sent one)
                return  # the CANCEL's own 64*T1 guard now runs on this transaction
        log.info("no final answer to the B-leg INVITE of call %s: transaction dropped", call.a.call_id)
        self._stop_client(ctx)
        if call.state != ENDED and not call.a_tx.final:
            call.cancelled = True
            self._answer_a(call, 408, "Request Timeout", [])

    def _cancel_gone(self, call: Call, cancel: ClientTx) -> None:
        """Our CANCEL got no final answer (its Timer F): give up the INVITE, end the call."""
        self._stop_client(cancel)
        cancel.call = None  # the call -> INVITE -> CANCEL -> call cycle (see _forget_client)
        ctx = call.b_invite
        if ctx is not None:
            self._stop_client(ctx)
        self._end(call, call.ended_by or "cancel")
