"""Transactions on the wire: sending a request and retransmitting it until answered or timed out, answering
a received one (and its retransmissions), and forgetting both when their time is up.
"""

from __future__ import annotations

from sipfilter.b2bua import wire
from sipfilter.b2bua.calls import (
    ENDED,
    ClientTx,
    ServerTx,
)
from sipfilter.b2bua.gate import Gate

# RFC 3261 §18.1.1: a request larger than this (path MTU unknown) goes over a congestion-controlled transport.
UDP_MAX_REQUEST = 1300


class Transactions(Gate):
    """Client and server transactions: send, retransmit, stop, forget, respond."""

    def _send_client(self, ctx: ClientTx) -> None:
        self.client_tx[ctx.branch] = ctx
        if not ctx.ep.reliable and len(ctx.data) > UDP_MAX_REQUEST:
            self.obs.large_request("udp")  # no TCP path to this peer: sent anyway (IP fragments it)
        ctx.ep.send(ctx.data, ctx.addr)
        t = self.rt.timers
        if not ctx.ep.reliable:
            ctx.interval = t.t1
            ctx.retrans = self._later(t.t1, self._retransmit, ctx)
        ctx.timeout = self._later(64 * t.t1, self._client_timeout, ctx)

    def _retransmit(self, ctx: ClientTx) -> None:
        if self.client_tx.get(ctx.branch) is not ctx:
            return
        self.obs.retransmission("sent")
        ctx.ep.send(ctx.data, ctx.addr)
        t = self.rt.timers
        ctx.interval = ctx.interval * 2 if ctx.method == "INVITE" else min(ctx.interval * 2, t.t2)
        ctx.retrans = self._later(ctx.interval, self._retransmit, ctx)

    def _stop_client(self, ctx: ClientTx, *, keep: float = 0.0) -> None:
        if ctx.retrans is not None:
            ctx.retrans.cancel()
            ctx.retrans = None
        if ctx.timeout is not None:
            ctx.timeout.cancel()
            ctx.timeout = None
        if keep > 0:  # keep absorbing retransmitted final responses (Timer D/K)
            ctx.timeout = self._later(keep, self._forget_client, ctx)
        else:
            self._forget_client(ctx)

    def _forget_client(self, ctx: ClientTx) -> None:
        if self.client_tx.get(ctx.branch) is ctx:
            del self.client_tx[ctx.branch]
            # Nothing reaches a forgotten transaction's call through it: break the call <-> transaction
            # cycle so that reference counting frees the call, not a (costly) cyclic GC pass.
            ctx.call = None

    def _forget_server(self, stx: ServerTx) -> None:
        if self.server_tx.get(stx.branch) is stx:
            del self.server_tx[stx.branch]
            call = stx.call
            if call is not None and call.a_tx is stx and call.state == ENDED:
                stx.call = None  # the call <-> INVITE transaction cycle (see _forget_client)

    def _respond(self, stx: ServerTx, status: int, reason: str, extra: list[str], body: bytes) -> None:
        call = stx.call
        lines = stx.lines(None)
        lines.extend(extra)
        data = wire.build_response(status, reason or wire.reason_phrase(status), lines, body)
        if status >= 200:
            stx.answer = data
            stx.final = status
        stx.ep.send(data, stx.addr)
        if call is not None:
            self.obs.response(call.trunk.name, "sent", status)
