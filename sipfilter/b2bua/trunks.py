"""Which trunk a request belongs to (source address, optional header) and which carrier target gets a call.

Pure data and choices, clock passed in: no sockets, no SIP parsing, no probes sent from here.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sipfilter.config import Target, TrunkConfig
from sipfilter.sip.message import Request
from sipfilter.transport.base import Addr
from sipfilter.transport.stream import ClientTls

DOWN_AFTER_FAILURES = 1  # one INVITE timeout / failed probe takes a target out of rotation


class TrunkMatcher:
    """Source IP (CIDR) and port → trunk, most specific network first; a port list or a header narrows
    trunks sharing a network."""

    def __init__(self, trunks: Mapping[str, TrunkConfig]) -> None:
        rows: list[tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network, TrunkConfig]] = []
        for trunk in trunks.values():
            for net in trunk.match.sources:
                rows.append((net.prefixlen, net, trunk))
        rows.sort(key=lambda r: (-r[0], r[2].match.header is None))
        self._rows = rows
        self._cache: dict[str, tuple[TrunkConfig, ...]] = {}

    def candidates(self, ip: str) -> tuple[TrunkConfig, ...]:
        found = self._cache.get(ip)
        if found is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return ()
            found = tuple(t for _, net, t in self._rows if addr.version == net.version and addr in net)
            if len(self._cache) > 4096:  # bounded: a spray of sources cannot grow it
                self._cache.clear()
            self._cache[ip] = found
        return found

    def match(
        self, ip: str, header: Callable[[str], str | None] | None = None, port: int | None = None
    ) -> TrunkConfig | None:
        """The trunk of a request from `ip`:`port`; `header(name)` returns the request's header value."""
        for trunk in self.candidates(ip):
            ports = trunk.match.ports
            if ports and port not in ports:
                continue
            want = trunk.match.header
            if want is None:
                return trunk
            if header is not None:
                value = header(want.name)
                if value is not None and value.strip() == want.value:
                    return trunk
        return None


def foreign_host(trunk: TrunkConfig, msg: Request) -> str | None:
    """The Request-URI host of a new request when the trunk lists `request_uri.domains` and this host is not
    one of them; None when it is, or when the trunk lists none (then the URI is rewritten to the carrier
    target and its host never matters). A set lookup: cheap enough for every INVITE."""
    domains = trunk.request_uri_domains
    if domains is None:
        return None
    try:
        host = getattr(msg.request_uri, "host", None)
    except Exception:  # an unparsable Request-URI names no domain of ours
        return "?"
    if host is None:  # tel: URI: a number, no host to reach
        return None
    key = host.lower().rstrip(".")
    if key.startswith("["):
        key = key[1:-1]
    return None if key in domains else host


def foreign_warning(hostname: str, trunk: TrunkConfig, host: str) -> str:
    """The Warning header line of the 403 that refuses a foreign Request-URI host."""
    shown = "".join(c for c in host if c.isalnum() or c in ".-:[]?")[:100]  # never a quote or CRLF
    why = f"Request-URI host {shown} is not in request_uri.domains of trunk {trunk.name}"
    return f'Warning: 399 {hostname} "{why}"'


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a B-leg request goes: the target's name (its URI), transport, host and port."""

    name: str
    transport: str
    host: str
    port: int
    uri_host: str  # host[:port] for the Request-URI

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)


def destination_of(target: Target) -> Destination:
    uri = target.uri
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    rest = rest.split(";", 1)[0].split("?", 1)[0]
    if "@" in rest:
        rest = rest.rsplit("@", 1)[1]
    scheme_default = 5061 if uri.lower().startswith("sips:") or target.transport == "tls" else 5060
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = int(tail[1:]) if tail.startswith(":") else scheme_default
    elif rest.count(":") == 1:
        host, port_s = rest.split(":")
        port = int(port_s)
    else:
        host, port = rest, scheme_default
    uri_host = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Destination(uri, target.transport, host, port, uri_host)


class TargetState:
    __slots__ = ("dest", "down_since", "failures", "priority", "tls", "up", "weight")

    def __init__(self, target: Target) -> None:
        self.dest = destination_of(target)
        tls = target.tls
        # The context was built at config load; the name verified defaults to the URI's host.
        self.tls = None if tls is None or tls.context is None else \
            ClientTls(tls.context, tls.server_name or self.dest.host)  # fmt: skip
        self.priority = target.priority
        self.weight = max(0, target.weight)
        self.up = True
        self.failures = 0
        self.down_since = 0.0


class TargetPool:
    """A trunk's carrier targets: priority order, weighted choice within a priority, health state."""

    def __init__(self, trunk: str, targets: Iterable[Target], rng: random.Random | None = None) -> None:
        self.trunk = trunk
        self.states = [TargetState(t) for t in targets]
        self._rng = rng or random.Random()
        self.on_change: Callable[[str, Destination, bool], None] | None = None

    def plan(self, include_down: bool = True) -> list[Destination]:
        """Targets to try for a new call, in order: up ones by priority (weighted shuffle within one
        priority), then, with `include_down` (trunk `on_targets_down: try`), the down ones: a call is then
        never refused only because every probe failed. Empty: nothing to try."""
        states = self.states
        if len(states) == 1:  # the usual trunk: one carrier target, nothing to order (no RNG draw)
            only = states[0]
            return [only.dest] if only.up or include_down else []
        up = [s for s in states if s.up]
        if not include_down:
            return self._order(up)
        down = [s for s in states if not s.up]
        return self._order(up) + self._order(down)

    def _order(self, states: list[TargetState]) -> list[Destination]:
        out: list[Destination] = []
        for prio in sorted({s.priority for s in states}):
            group = [s for s in states if s.priority == prio]
            while group:
                total = sum(s.weight for s in group)
                if total <= 0:
                    out.extend(s.dest for s in group)
                    break
                pick = self._rng.uniform(0, total)
                acc = 0.0
                for i, s in enumerate(group):
                    acc += s.weight
                    if pick <= acc:
                        out.append(group.pop(i).dest)
                        break
                else:
                    out.append(group.pop().dest)
        return out

    def _state(self, dest: Destination) -> TargetState | None:
        for s in self.states:
            if s.dest is dest or s.dest == dest:  # the plan hands out the states' own objects
                return s
        return None

    def mark(self, dest: Destination, ok: bool, now: float) -> None:
        """Record an answer (ok) or a failure (timeout, 503, probe unanswered) of a target."""
        s = self._state(dest)
        if s is None:
            return
        if ok:
            s.failures = 0
            if not s.up:
                s.up = True
                self._changed(s)
            return
        s.failures += 1
        if s.up and s.failures >= DOWN_AFTER_FAILURES:
            s.up = False
            s.down_since = now
            self._changed(s)

    def _changed(self, s: TargetState) -> None:
        if self.on_change is not None:
            self.on_change(self.trunk, s.dest, s.up)

    def adopt(self, old: TargetPool) -> None:
        """Keep health state of targets that survive a config reload."""
        for s in self.states:
            prev = old._state(s.dest)
            if prev is not None:
                s.up, s.failures, s.down_since = prev.up, prev.failures, prev.down_since


def tls_client_at(pools: Mapping[str, TargetPool], addr: Addr) -> ClientTls | None:
    """The TLS settings of the configured target at `addr` (None: not a TLS target of ours). Read when a
    connection is opened, not per message."""
    for pool in pools.values():
        for s in pool.states:
            if s.tls is not None and s.dest.addr == addr:
                return s.tls
    return None


def targets_at(pools: Mapping[str, TargetPool], addr: Addr) -> list[tuple[str, Destination]]:
    """(trunk, target) of every configured target at `addr` (several trunks may share a carrier)."""
    return [(pool.trunk, s.dest) for pool in pools.values() for s in pool.states if s.dest.addr == addr]


def tcp_twin(pool: TargetPool | None, dest: Destination) -> Destination | None:
    """The trunk's TCP target at the same address as the UDP target `dest` (where a request too large for
    UDP can go instead), or None."""
    if pool is None:
        return None
    for s in pool.states:
        if s.dest.transport == "tcp" and s.dest.addr == dest.addr:
            return s.dest
    return None
