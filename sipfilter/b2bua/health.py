"""Carrier health: OPTIONS probes of every carrier target; answers and timeouts mark targets up or down."""

from __future__ import annotations

from sipfilter.b2bua import wire
from sipfilter.b2bua.calls import (
    OUTSIDE,
    ClientTx,
)
from sipfilter.b2bua.ids import new_branch, new_call_id, new_tag
from sipfilter.b2bua.relay import Relay

PROBE_DEADLINE = 8.0  # seconds: a target slower than this to answer an OPTIONS is marked down


class Health(Relay):
    """Probing carrier targets."""

    def probe_targets(self) -> None:
        """Send one OPTIONS to every target of every trunk; answers and timeouts update their health."""
        t1 = self.rt.timers.t1
        deadline = min(64 * t1, PROBE_DEADLINE)
        for pool in self.rt.pools.values():
            for state in pool.states:
                dest = state.dest
                ep = self.endpoint_for(OUTSIDE, dest.transport)
                if ep is None:
                    continue
                branch = new_branch()
                lines = wire.request_head("OPTIONS", 1, ep.transport, ep.hostport, branch,
                                          f"<sip:{self.hostname}@{ep.hostport}>;tag={new_tag()}",
                                          f"<sip:{dest.uri_host}>", new_call_id(self.hostname))  # fmt: skip
                data = wire.build_request("OPTIONS", f"sip:{dest.uri_host}", lines)
                ctx = ClientTx(None, OUTSIDE, "OPTIONS", 1, branch, data, ep, dest.addr, None)
                ctx.dest = dest
                self._send_client(ctx)
                if deadline < 64 * t1:  # a probe answers within seconds or the target counts as down
                    ctx.timeout = self._later(deadline, self._probe_deadline, ctx)

    def _probe_deadline(self, ctx: ClientTx) -> None:
        if self.client_tx.get(ctx.branch) is ctx:
            ctx.timeout = None
            self._stop_client(ctx)
            self._probe_result(ctx, False)

    def _probe_result(self, ctx: ClientTx, ok: bool) -> None:
        if ctx.dest is None:
            return
        for pool in self.rt.pools.values():
            if any(s.dest == ctx.dest for s in pool.states):
                pool.mark(ctx.dest, ok, self._clock())
