"""Transactions on the wire, through the §17 machines of sipfilter.sip.transaction: sending a request and
retransmitting it until answered or timed out, answering a received one (and its retransmissions), and
forgetting both when their machines end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sipfilter.b2bua import wire
from sipfilter.b2bua.calls import (
    ENDED,
    ClientTx,
    ServerTx,
)
from sipfilter.b2bua.gate import Gate
from sipfilter.b2bua.wheel import cancel
from sipfilter.sip.message import Request, Response
from sipfilter.sip.transaction import (
    REASON_NORMAL,
    Action,
    CancelTimer,
    ClientTransaction,
    Deliver,
    InviteClientTransaction,
    InviteServerTransaction,
    MessageReceived,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Send,
    SendResponse,
    ServerTransaction,
    StartTimer,
    Terminated,
    TimerFired,
    TxState,
)

# RFC 3261 §18.1.1: a request larger than this (path MTU unknown) goes over a congestion-controlled transport.
UDP_MAX_REQUEST = 1300


class _AckOf:
    """The ACK of a non-2xx answer to an INVITE we sent (RFC 3261 §17.1.1.3), built from that INVITE's
    bytes and the answer's To: what the INVITE client transaction sends (and sends again) for it."""

    __slots__ = ("invite",)

    def __init__(self, invite: bytes) -> None:
        self.invite = invite

    def build(self, response: Any) -> bytes:
        to = response.headers.get("To")
        return wire.ack_for_non2xx(self.invite, "" if to is None else str(to))


class Transactions(Gate):
    """Client and server transactions driven through the §17 machines of sipfilter.sip.transaction: the
    B2BUA feeds them what arrives and what it answers, and carries out what they ask (send, timers, end)."""

    def _send_client(self, ctx: ClientTx) -> None:
        """Start the client transaction of `ctx` (its request already built) and send the request."""
        self.client_tx[ctx.branch] = ctx
        ep = ctx.ep
        data = ctx.data
        if not ep.reliable and len(data) > UDP_MAX_REQUEST:
            self.obs.large_request("udp")  # no TCP path to this peer: sent anyway (IP fragments it)
        timers = self.rt.timers.transactions
        key = (ctx.branch, ctx.method)
        machine: ClientTransaction
        if ctx.method == "INVITE":
            machine = InviteClientTransaction(data, reliable=ep.reliable, timers=timers, key=key,
                                              ack=_AckOf(data).build)  # fmt: skip
        else:
            machine = NonInviteClientTransaction(data, reliable=ep.reliable, timers=timers, key=key)
        ctx.machine = machine
        self._run_client(ctx, machine.start())

    def _client_timer(self, ctx: ClientTx, name: str) -> None:
        ctx.timers.pop(name, None)
        machine = ctx.machine
        if machine is not None and self.client_tx.get(ctx.branch) is ctx:
            self._run_client(ctx, machine.handle(TimerFired(name)))

    def _client_response(self, ctx: ClientTx, msg: Response) -> bool:
        """Feed a response to the transaction of `ctx`; True when it is for the B2BUA to act on (a
        retransmitted non-2xx final is absorbed: the transaction sends its ACK again)."""
        machine = ctx.machine
        return machine is not None and self._run_client(ctx, machine.handle(MessageReceived(msg)))

    def _arm(self, timers: dict[str, Any], action: StartTimer, fire: Callable[..., Any], tx: object) -> None:
        """Start the timer a transaction asked for, in place of one of the same name."""
        cancel(timers.get(action.name))
        timers[action.name] = self._later(action.seconds, fire, tx, action.name)

    def _run_client(self, ctx: ClientTx, actions: list[Action]) -> bool:
        """Carry out what the transaction asks; True if it delivered a response to the B2BUA."""
        delivered = False
        for action in actions:
            kind = type(action)
            if kind is Send:
                assert isinstance(action, Send)
                if action.retransmission:
                    self.obs.retransmission("sent")
                out = action.msg
                if isinstance(out, bytes) and out:
                    ctx.ep.send(out, ctx.addr)
            elif kind is StartTimer:
                assert isinstance(action, StartTimer)
                self._arm(ctx.timers, action, self._client_timer, ctx)
            elif kind is CancelTimer:
                assert isinstance(action, CancelTimer)
                _disarm(ctx.timers, action.name)
            elif kind is Deliver:
                delivered = True
            elif kind is Terminated:
                assert isinstance(action, Terminated)
                if action.reason == REASON_NORMAL:
                    self._stop_client(ctx)
                else:  # Timer B/F: no final answer (§8.1.3.1: as a 408)
                    self._drop_client(ctx)
                    self._client_timeout(ctx)
                    ctx.call = None
        return delivered

    def _drop_client(self, ctx: ClientTx) -> None:
        """Stop every timer of `ctx` and take it out of the table (its call is kept, for the caller)."""
        for handle in ctx.timers.values():
            cancel(handle)
        ctx.timers.clear()
        if ctx.timeout is not None:
            cancel(ctx.timeout)
            ctx.timeout = None
        if self.client_tx.get(ctx.branch) is ctx:
            del self.client_tx[ctx.branch]

    def _stop_client(self, ctx: ClientTx) -> None:
        """Give up the transaction of `ctx` now, and forget it."""
        in_table = self.client_tx.get(ctx.branch) is ctx
        self._drop_client(ctx)
        if in_table:
            ctx.call = None  # (see _forget_client)

    def _stop_guard(self, ctx: ClientTx) -> None:
        """Cancel the B2BUA's own guard on `ctx` (its transaction's timers run on)."""
        if ctx.timeout is not None:
            cancel(ctx.timeout)
            ctx.timeout = None

    def _forget_client(self, ctx: ClientTx) -> None:
        if self.client_tx.get(ctx.branch) is ctx:
            del self.client_tx[ctx.branch]
            # Nothing reaches a forgotten transaction's call through it: break the call <-> transaction
            # cycle so that reference counting frees the call, not a (costly) cyclic GC pass.
            ctx.call = None

    # -- server transactions ---------------------------------------------------------------------------------

    def _file_server(self, stx: ServerTx, msg: Request, trying: bytes = b"") -> None:
        """Start the server transaction of the request `msg` (`stx` holds what its answers echo) and file it
        by branch; `trying`: its 100 Trying, sent at once."""
        timers = self.rt.timers.transactions
        reliable = stx.ep.reliable
        key = (stx.branch, stx.method)
        machine: ServerTransaction
        if stx.method == "INVITE":
            machine = InviteServerTransaction(msg, reliable=reliable, timers=timers, key=key)
        else:
            machine = NonInviteServerTransaction(msg, reliable=reliable, timers=timers, key=key)
        stx.machine = machine
        self.server_tx[stx.branch] = stx
        actions = machine.start()  # hands the request up (the B2BUA has it) and, for an INVITE, arms 100
        if trying:
            # Answered at once: the machine's 100 Trying timer is cancelled before it was ever scheduled.
            actions = machine.handle(SendResponse(trying, 100))
        self._run_server(stx, actions, False)

    def _server_request(self, stx: ServerTx, msg: Request) -> bool:
        """Feed a retransmitted request (or an ACK) to the transaction of `stx`, which answers it again or
        absorbs it; True when it is for the B2BUA to act on (the ACK of a 2xx, RFC 6026 Accepted)."""
        machine = stx.machine
        return machine is not None and self._run_server(stx, machine.handle(MessageReceived(msg)), False)

    def _server_send(self, stx: ServerTx, data: bytes, status: int) -> None:
        """Send a response to the request of `stx` through its transaction."""
        machine = stx.machine
        if machine is None:  # not filed: a stateless answer
            stx.ep.send(data, stx.addr)
            return
        self._run_server(stx, machine.handle(SendResponse(data, status)), False)

    def _server_timer(self, stx: ServerTx, name: str) -> None:
        timers = stx.timers
        if timers is not None:
            timers.pop(name, None)
        machine = stx.machine
        if machine is not None and self.server_tx.get(stx.branch) is stx:
            self._run_server(stx, machine.handle(TimerFired(name)), True)

    def _run_server(self, stx: ServerTx, actions: list[Action], timer: bool) -> bool:
        """Carry out what the server transaction asks; True if it delivered a request to the B2BUA. `timer`:
        a retransmission now is one of its own (Timer G), counted as sent."""
        delivered = False
        for action in actions:
            kind = type(action)
            if kind is Send:
                assert isinstance(action, Send)
                if timer and action.retransmission:
                    self.obs.retransmission("sent")
                out = action.msg
                if isinstance(out, bytes):
                    stx.ep.send(out, stx.addr)
            elif kind is StartTimer:
                assert isinstance(action, StartTimer)
                if stx.timers is None:
                    stx.timers = {}
                self._arm(stx.timers, action, self._server_timer, stx)
            elif kind is CancelTimer:
                assert isinstance(action, CancelTimer)
                _disarm(stx.timers, action.name)
            elif kind is Deliver:
                delivered = True
            elif kind is Terminated:
                assert isinstance(action, Terminated)
                self._server_ended(stx, action.reason != REASON_NORMAL)
        return delivered

    def _unanswered(self, stx: ServerTx) -> None:
        """A relayed request still unanswered 64*T1 on (the other leg's transaction gave no final answer
        and did not time out): forget its transaction, and the one that relayed it (an INVITE client
        transaction that got a provisional waits for its final answer without a timer of its own)."""
        stx.guard = None
        if not stx.final:
            self._forget_server(stx)
            # Rare, so no index: only an INVITE past its provisional (others still have Timer B or F).
            stuck = [ctx for ctx in self.client_tx.values() if ctx.origin is stx and ctx.machine is not None
                     and ctx.method == "INVITE" and ctx.machine.state is TxState.PROCEEDING]  # fmt: skip
            for ctx in stuck:
                self._stop_client(ctx)

    def _server_ended(self, stx: ServerTx, timed_out: bool) -> None:
        """The transaction of `stx` is over (`timed_out`: Timer H, no ACK came): forget it."""
        self._forget_server(stx)

    def _forget_server(self, stx: ServerTx) -> None:
        if self.server_tx.get(stx.branch) is stx:
            del self.server_tx[stx.branch]
            timers = stx.timers
            if timers:
                for handle in timers.values():
                    cancel(handle)
                timers.clear()
            if stx.guard is not None:
                cancel(stx.guard)
                stx.guard = None
            call = stx.call
            if call is not None and call.a_tx is stx and call.state == ENDED:
                stx.call = None  # the call <-> INVITE transaction cycle (see _forget_client)

    def _respond(self, stx: ServerTx, status: int, reason: str, extra: list[str], body: bytes) -> None:
        call = stx.call
        lines = stx.lines(None)
        lines.extend(extra)
        data = wire.build_response(status, reason or wire.reason_phrase(status), lines, body)
        self._server_send(stx, data, status)
        if call is not None:
            self.obs.response(call.trunk.name, "sent", status)


def _disarm(timers: dict[str, Any] | None, name: str) -> None:
    if timers is not None:
        cancel(timers.pop(name, None))
