"""The B2BUA: A-leg from the dialer, B-leg to the carrier, relaying between them with topology hiding.

Takes parsed messages and endpoints, sends bytes and schedules timers through what it is given; it never
opens sockets, never parses headers by hand, and asks the policy engine once per new INVITE. This module
keeps the dispatch (entry points, requests, responses, transaction timeouts, the new INVITE and its policy
decision); the rooms it is built on are listed in b2bua/plumbing.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from sipfilter.b2bua import wire
from sipfilter.b2bua.calls import (
    ANSWERED,
    CONFIRMED,
    ENDED,
    INSIDE,
    OUTSIDE,
    Call,
    ClientTx,
    Leg,
    ServerTx,
    first_value,
    tag_of,
    top_branch,
)
from sipfilter.b2bua.drain import Drain
from sipfilter.b2bua.facts import read_invite
from sipfilter.b2bua.ids import new_tag
from sipfilter.b2bua.in_dialog import ALLOW
from sipfilter.b2bua.limits import Admit
from sipfilter.b2bua.observe import NO_ANSWER, NO_CONNECTION
from sipfilter.b2bua.runtime import Runtime, compile_runtime
from sipfilter.b2bua.trunks import (
    foreign_host,
    foreign_warning,
    targets_at,
)
from sipfilter.sip.message import Request, Response
from sipfilter.transport.base import Addr, Endpoint

# What the application and the tests import from here: the B2BUA, and what it is built from.
__all__ = ["B2BUA", "INSIDE", "OUTSIDE", "Runtime", "compile_runtime"]

log = logging.getLogger("sipfilter.b2bua.core")  # one logger for the B2BUA, whichever room writes


class B2BUA(Drain):
    """Owns every call and transaction. `on_datagram`/`on_message` are the transport's entry points."""

    def on_datagram(self, ep: Endpoint, data: bytes, addr: Addr) -> None:
        if len(data) <= 4 and not data.strip():  # CRLF keep-alive
            return
        try:
            # Responses are only matched to our transactions (Via branch, CSeq): skip their validation.
            msg = self._parse(data, validate=data[:8] != b"SIP/2.0 ")
        except self._parse_error as exc:
            self._malformed(ep, addr, exc, data)
            return
        route = self.route_parsed
        if route is not None and route(ep, data, addr, msg):
            return
        self.on_message(ep, msg, addr)

    def on_message(self, ep: Endpoint, msg: Any, addr: Addr) -> None:
        if isinstance(msg, self._parse_error):
            self._malformed(ep, addr, msg, b"")
            return
        try:
            if not msg.is_request:
                self._on_response(ep, msg, addr)
            else:
                self._on_request(ep, msg, addr)
        except self._parse_error as exc:  # a typed header that failed lazily
            self._malformed(ep, addr, exc, b"", msg)
        except Exception:
            log.exception("error handling a message from %s:%s", addr[0], addr[1])

    def _on_request(self, ep: Endpoint, msg: Request, addr: Addr) -> None:
        method: str = msg.method
        if method == "ACK":
            self._on_ack(ep, msg, addr)
            return
        branch = top_branch(msg)
        stx = self.server_tx.get(branch) if branch else None
        if stx is not None and stx.addr == addr and (stx.method == method):
            self.obs.retransmission("received")
            self._server_request(stx, msg)  # answered again with the last response, or absorbed
            return
        if method == "CANCEL":
            self._on_cancel(ep, msg, addr, branch)
            return
        if tag_of(msg.to):
            self._in_dialog(ep, msg, addr)
            return
        if ep.side == OUTSIDE:
            self._outside_new_request(ep, msg, addr)
            return
        if method == "INVITE":
            call = self.calls_a.get(str(msg.call_id))
            if call is not None:  # same Call-ID, new branch and no To tag: a second INVITE we refuse
                self._stateless(ep, addr, msg, 482, "Loop Detected")
                return
            self._new_invite(ep, msg, addr)
            return
        trunk = self.rt.matcher.match(addr[0], msg.headers.get, addr[1])
        if trunk is None:
            self._unknown_source(ep, msg, addr)
            return
        if self._refused_by_uas_checks(ep, msg, addr):
            return
        if not self._authenticated(ep, msg, addr, trunk, self._clock()):
            return
        # OPTIONS and the rest spend the source's budget: a known address cannot flood us either.
        admit = self.admission.admit_request(addr[0], trunk.name, self._clock())
        if not self._admitted(ep, msg, addr, admit):
            return
        if method == "OPTIONS":  # dialers probing us: we are up
            self._stateless(ep, addr, msg, 200 if not self.draining else 503, "")
            return
        self._stateless(ep, addr, msg, 405 if method not in ("BYE", "PRACK", "UPDATE", "INFO") else 481, "",
                        [f"Allow: {ALLOW}"])

    def _new_invite(self, ep: Endpoint, msg: Request, addr: Addr) -> None:
        rt = self.rt
        trunk = rt.matcher.match(addr[0], msg.headers.get, addr[1])
        if trunk is None:
            self._unknown_source(ep, msg, addr)
            return
        self.obs.invite(trunk.name, ep.transport)
        now = self._clock()
        if self.draining:
            self.obs.overload("draining")
            self._stateless(ep, addr, msg, 503, "Service Unavailable", [f"Retry-After: {self.retry_after_s}"])
            return
        mf = msg.max_forwards
        if mf is not None and mf <= 0:
            self._stateless(ep, addr, msg, 483, "Too Many Hops")
            return
        if self._refused_by_uas_checks(ep, msg, addr):
            return
        if not self._authenticated(ep, msg, addr, trunk, now):
            return
        foreign = foreign_host(trunk, msg)  # request_uri.domains: a set lookup (None when unset or ours)
        if foreign is not None:
            if self._admitted(ep, msg, addr, self.admission.admit_request(addr[0], trunk.name, now)):
                self.obs.foreign_domain(trunk.name)
                warning = foreign_warning(self.hostname, trunk, foreign)
                self._stateless(ep, addr, msg, 403, "Forbidden", [warning])
            return
        admit = self.admission.admit_invite(addr[0], trunk.name, now)
        if not isinstance(admit, Admit):  # inline, not _admitted(): the slot below needs the narrowed type
            self._admitted(ep, msg, addr, admit)
            return
        stx = ServerTx(msg, ep, addr, None, first_value(msg, "To"))
        a_tag = new_tag()
        contact = msg.contacts
        a_target = str(contact[0].uri) if contact else str(msg.uri)
        a = Leg(ep, addr, stx.call_id, wire.with_tag(stx.to, a_tag), stx.from_, a_target, 1)
        a.remote_tag = tag_of(msg.from_)
        rrs = msg.record_routes
        if rrs:
            a.routes = [f"<{rr.uri}>" if not str(rr).startswith("<") else str(rr) for rr in rrs]
        call = Call(trunk, a, stx, admit.slot, now)
        call.passes = rt.passes.get(trunk.name)
        if rt.auth is not None and rt.auth.applies(trunk.name):
            call.auth = rt.auth
        if rt.identity:
            call.identity = rt.identity.get(trunk.name)
        stx.call = call
        self.calls_a[stx.call_id] = call
        self.obs.dialogs(trunk.name, 1)
        # 100 Trying at once: the dialer stops retransmitting while the policy decides.
        self._file_server(stx, msg, wire.build_response(100, "Trying", stx.lines(None)))
        self._decide(call, msg, now)

    def _decide(self, call: Call, msg: Request, now: float) -> None:
        rt = self.rt
        t0 = time.perf_counter()
        try:
            trunk = call.trunk
            ids = read_invite(rt.policy.reader(trunk.name), trunk.name, msg, now, trunk.callee_zone_header)
        except self._parse_error as exc:  # a malformed P-Asserted-Identity: nothing the policy can read
            self.obs.malformed(call.a.ep.transport)
            self._answer_a(call, 400, str(getattr(exc, "reason", "") or "Bad Request"), [])
            return
        except Exception:
            log.exception("policy facts failed on trunk %s", call.trunk.name)
            self._answer_a(call, 500, "Server Internal Error", [])
            return
        call.ids = ids
        facts = ids.facts
        try:
            verifier = call.identity.verifier if call.identity is not None else None
            if verifier is None:
                coro = rt.policy.decide(facts, rt.store)
            else:  # STIR/SHAKEN first (from memory; an x5u never seen is fetched), then the policy
                coro = verifier.decide(rt.policy, facts, msg, rt.store, now, self.obs)
        except Exception:
            log.exception("policy facts failed on trunk %s", call.trunk.name)
            self._answer_a(call, 500, "Server Internal Error", [])
            return
        # Most decisions never suspend (in-process store): run the coroutine inline, no Task per call.
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            self._decided(call, msg, facts, stop.value, t0)
            return
        except Exception:
            log.exception("policy decision failed on trunk %s", call.trunk.name)
            self._answer_a(call, 500, "Server Internal Error", [])
            return
        task = asyncio.get_running_loop().create_task(_finish(coro, awaited))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._decided_async(t, call, msg, facts, t0))

    def _decided_async(self, task: asyncio.Task[Any], call: Call, msg: Request, facts: Any,
                       t0: float) -> None:  # fmt: skip
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("policy decision failed: %r", task.exception())
            self._answer_a(call, 500, "Server Internal Error", [])
            return
        try:
            self._decided(call, msg, facts, task.result(), t0)
        except Exception:
            log.exception("error after the policy decision")

    def _decided(self, call: Call, msg: Request, facts: Any, decision: Any, t0: float) -> None:
        verdict = decision.verdict
        if call.trunk.objection_header is not None:  # the dialer may report an objection on its BYE
            call.callee = facts.callee.e164
        trunk = call.trunk.name
        kind = "allow" if verdict.allowed else "reject"
        if decision.monitored:
            kind = "monitor_reject"
        self.obs.decision(trunk, kind, verdict.rule, time.perf_counter() - t0)
        audit = self.rt.audit
        relay_ok = True
        if audit is not None:
            try:
                audit.log_decision(facts, decision, call.trunk.account, call.trunk.mode)
                relay_ok = bool(audit.should_relay)
            except Exception:
                log.exception("audit write failed")
        if call.state == ENDED or call.cancelled:
            return  # CANCEL arrived while deciding: already answered 487
        if not verdict.allowed:
            self._answer_a(call, verdict.status, "", wire.verdict_lines(verdict, self.hostname))
            return
        if not relay_ok:  # audit.on_write_error: stop-relaying and the audit log cannot be written
            warning = f'Warning: 399 {self.hostname} "audit log not writable (audit.on_write_error)"'
            self._answer_a(call, 503, "Service Unavailable", ["Retry-After: 60", warning])
            return
        # The ring timeout runs from the relay decision: a rejected call never needs the timer.
        call.timers["ring"] = self._later(self.rt.timers.ring_timeout, self._ring_timeout, call)
        pool = self.rt.pools.get(trunk)
        call.plan = pool.plan(call.trunk.on_targets_down == "try") if pool is not None else []
        if not call.plan:  # `on_targets_down: reject` and every target down: fail fast, not after Timer B
            retry = max(1, round(self.rt.config.sip.probe_interval_s))
            warning = f'Warning: 399 {self.hostname} "every carrier target of trunk {trunk} is down"'
            self._answer_a(call, 503, "Service Unavailable", [f"Retry-After: {retry}", warning])
            return
        self._start_b_leg(call, msg)
        self.obs.relayed(trunk)

    def _on_response(self, ep: Endpoint, msg: Response, addr: Addr) -> None:
        branch = top_branch(msg)
        cseq = msg.cseq
        if cseq.method == "CANCEL":
            branch += ".c"  # CANCEL shares its INVITE's branch; we index it apart
        ctx = self.client_tx.get(branch)
        if ctx is None or ctx.addr[0] != addr[0] or cseq.method != ctx.method:
            return  # not ours (or not from where we sent it): drop
        status: int = msg.status
        call = ctx.call
        if call is not None:
            self.obs.response(call.trunk.name, "received", status)
        # The transaction stops retransmitting, ACKs a non-2xx INVITE answer and absorbs what repeats.
        if not self._client_response(ctx, msg):
            return
        if call is None:
            if ctx.method == "OPTIONS" and status >= 200:
                self._stop_guard(ctx)
                self._probe_result(ctx, status != 503)
            return
        if ctx.method == "INVITE" and ctx is call.b_invite:
            self._b_invite_response(call, ctx, msg, status)
            return
        if ctx.method == "CANCEL":
            return
        if status < 200:
            ctx.provisional = True
            if status > 100 and ctx.origin is not None:
                self._relay_response(call, ctx, msg)
            return
        if ctx.origin is not None:
            self._relay_response(call, ctx, msg)
        if ctx.method == "BYE":
            self._end(call, call.ended_by or "bye")

    def _client_timeout(self, ctx: ClientTx) -> None:
        """A client transaction ended with no final answer (Timer B or F, or no connection): it is out of
        the table already; what it was for reacts as to a 408 (§8.1.3.1)."""
        call = ctx.call
        if ctx.method == "OPTIONS" and call is None and ctx.dest is not None:
            self._probe_result(ctx, False)
            return
        if call is None:
            return
        if ctx.method == "CANCEL":
            self._cancel_gone(call, ctx)
            return
        if ctx is call.b_invite:
            if ctx.provisional or ctx.final:
                return  # ringing: Timer C and the ring timeout govern; answered: nothing to time out
            self._carrier_final(call, ctx, NO_ANSWER)
            self._b_invite_failed(call, ctx, 408)
            return
        if ctx.origin is not None and ctx.method != "ACK":
            if ctx.method == "INVITE":
                call.reinvite.pop(ctx.side, None)  # else the next re-INVITE would get 491 forever
            self._relay_response_to(ctx.origin, 408, "Request Timeout", [], b"")
        if ctx.method == "BYE":
            self._end(call, "bye-timeout")
        elif ctx.method != "ACK" and call.state in (ANSWERED, CONFIRMED):
            # No answer inside the dialog: that leg is gone (§12.2.1.2), so is the call. BYE both legs.
            log.info("no answer to %s on call %s: hanging up", ctx.method, call.a.call_id)
            call.ended_by = "peer-timeout"
            self._cancel_timer(call, "max")
            self._send_bye(call, OUTSIDE)
            self._send_bye(call, INSIDE)
            self._end_soon(call)

    def on_connect_failed(self, ep: Endpoint, addr: Addr, failure: Any) -> None:
        """No connection to `addr` (refused, TLS handshake failed): what waited on it fails now as a transport
        error (§8.1.3.1: a 503 of our own, so the INVITE fails over), not at Timer B."""
        for trunk, dest in targets_at(self.rt.pools, addr):
            self.obs.connect_failed(trunk, dest.name, failure.transport, failure.reason)
        for ctx in [c for c in self.client_tx.values() if c.ep is ep and c.addr == addr and not c.final]:
            call = ctx.call
            if call is not None and ctx is call.b_invite and not ctx.provisional:
                self._stop_client(ctx)
                self._carrier_final(call, ctx, NO_CONNECTION)
                self._b_invite_failed(call, ctx, 503)
            else:
                self._drop_client(ctx)
                self._client_timeout(ctx)
                ctx.call = None


async def _finish(coro: Coroutine[Any, Any, Any], awaited: Any) -> Any:
    """Resume a coroutine that suspended on `awaited` after being stepped by hand (as a Task would: the
    coroutine reads the future's result or exception itself when sent None)."""
    while True:
        if awaited is None:
            await asyncio.sleep(0)
        else:
            # The coroutine's own `await` marked the future as taken by a Task (a Task's step clears the mark
            # when it takes the future): cleared here as that step would, so that awaiting it is allowed.
            if getattr(awaited, "_asyncio_future_blocking", False):
                awaited._asyncio_future_blocking = False
            try:
                await awaited
            except Exception:
                pass  # the coroutine re-raises it from the future's result()
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            return stop.value
