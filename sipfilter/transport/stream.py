"""TCP and TLS endpoints: a listening server plus outbound connections, one StreamFramer per connection.

Frames with the SIP core's StreamFramer and hands whole messages to the handler; never interprets them.
Outbound TLS uses the context the handler names for that peer (built once per config load, never here per
connection), and a connection that cannot be opened is reported to the handler, which decides what fails.
Inbound connections are admitted as they are accepted, before anything is read from them or any TLS
handshake: the handler's ACL (`accept_connection`), then caps per source address and in total
(ConnectionTable); one idle for `idle_timeout_s` is closed unless the handler says a call still needs it
(`peers_in_use`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import resource
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any, cast

from sipfilter.sip.framing import KeepAlive, StreamFramer
from sipfilter.transport.base import Addr, Endpoint, Handler

log = logging.getLogger(__name__)

_MAX_PENDING = 1 << 20  # bytes queued on a connection still being opened; beyond that, drop
# Opening a connection (TCP + TLS handshake) longer than this fails it: well inside Timer B (32 s), so a
# carrier that accepts and then stalls fails over like a dead one, and its calls do not wait 64*T1.
CONNECT_TIMEOUT_S = 10.0

# Why a connection could not be opened: the `reason` of ConnectFailure and of the TLS failure metric.
REASON_CONNECT = "connect"  # TCP refused / unreachable (not TLS-specific)
REASON_TIMEOUT = "timeout"
REASON_UNKNOWN_CA = "unknown-ca"  # chain does not lead to a CA we trust (self-signed, another CA)
REASON_HOSTNAME = "hostname-mismatch"  # certificate valid, but not for the name we verify
REASON_EXPIRED = "expired"
REASON_NOT_YET_VALID = "not-yet-valid"
REASON_REVOKED = "revoked"  # on the target's `tls.crl`
REASON_CRL = "crl"  # with `tls.crl`: no valid CRL from the certificate's issuer (expired, not yet valid, bad)
REASON_UNTRUSTED = "untrusted"  # any other certificate verification failure (bad signature, purpose…)
REASON_PROTOCOL = "protocol"  # handshake failed outside certificate checks (version, cipher, peer alert)
CONNECT_REASONS = (REASON_CONNECT, REASON_TIMEOUT, REASON_UNKNOWN_CA, REASON_HOSTNAME, REASON_EXPIRED,
                   REASON_NOT_YET_VALID, REASON_REVOKED, REASON_CRL, REASON_UNTRUSTED,
                   REASON_PROTOCOL)  # fmt: skip
# OpenSSL X509_V_ERR_* codes (x509_vfy.h) → reason.
_VERIFY_REASONS = {
    2: REASON_UNKNOWN_CA, 18: REASON_UNKNOWN_CA, 19: REASON_UNKNOWN_CA, 20: REASON_UNKNOWN_CA,
    21: REASON_UNKNOWN_CA, 9: REASON_NOT_YET_VALID, 10: REASON_EXPIRED, 62: REASON_HOSTNAME,
    64: REASON_HOSTNAME, 23: REASON_REVOKED,
    3: REASON_CRL, 5: REASON_CRL, 8: REASON_CRL, 11: REASON_CRL, 12: REASON_CRL, 15: REASON_CRL,
    16: REASON_CRL, 33: REASON_CRL,
}  # fmt: skip
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# A peer that has not finished its TLS handshake by then is dropped (it holds a connection slot meanwhile).
HANDSHAKE_TIMEOUT_S = 10.0
ACCEPT_BACKLOG = 512  # connections the kernel queues while the accept loop catches up (capped by somaxconn)
# Why an inbound connection was refused or closed: the `reason` reported to the handler (and the metric).
REFUSED_UNKNOWN_SOURCE = "unknown-source"
REFUSED_PER_SOURCE = "per-source"
REFUSED_TOTAL = "total"
CLOSED_IDLE = "idle"
FD_RESERVE = 256  # descriptors kept for everything but inbound connections (UDP, carriers, admin, store)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Caps on inbound TCP/TLS connections (`limits.connections` in the config)."""

    max_total: int = 1000  # every stream listener of the process together
    max_per_source: int = 64  # from one source address
    idle_timeout_s: float = 300.0  # no message received for this long (and no call on it): closed


class ConnectionTable:
    """The inbound connections of a process's stream listeners, counted per source address and in total.
    Shared by the listeners; `limits` may be replaced at any time (a reload): it applies to new
    connections, and the idle timeout to the next sweep."""

    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits or ConnectionLimits()
        self.total = 0
        self._by_source: dict[str, int] = {}

    def admit(self, ip: str) -> str | None:
        """Take a slot for a connection from `ip`; None when admitted, else the refusal reason."""
        limits = self.limits
        if self.total >= limits.max_total:
            return REFUSED_TOTAL
        held = self._by_source.get(ip, 0)
        if held >= limits.max_per_source:
            return REFUSED_PER_SOURCE
        self._by_source[ip] = held + 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        held = self._by_source.get(ip, 0)
        if held <= 0:
            return
        self.total -= 1
        if held == 1:
            del self._by_source[ip]
        else:
            self._by_source[ip] = held - 1

    def from_source(self, ip: str) -> int:
        return self._by_source.get(ip, 0)


def fd_headroom(max_total: int) -> int:
    """Make room for `max_total` inbound connections plus FD_RESERVE descriptors: raise the soft
    RLIMIT_NOFILE towards the hard one if needed. Returns how many inbound connections fit (max_total, or
    fewer when the hard limit is too low: the caller logs it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_total + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return max_total
    return max(0, soft - FD_RESERVE)


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How to open a TLS connection to one peer: the (shared, prebuilt) context and the name to verify."""

    context: ssl.SSLContext
    server_name: str


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    """An outbound connection that could not be opened; `detail` is for logs (OpenSSL's words)."""

    transport: str  # tcp | tls
    reason: str  # one of CONNECT_REASONS
    detail: str


def failure_reason(exc: BaseException) -> str:
    """The CONNECT_REASONS value for an exception raised while opening a connection."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(int(exc.verify_code or 0), REASON_UNTRUSTED)
    if isinstance(exc, ssl.SSLError):
        return REASON_PROTOCOL
    if isinstance(exc, TimeoutError):
        return REASON_TIMEOUT
    return REASON_CONNECT


class TlsSetupError(ValueError):
    """A TLS context could not be built; `part` names the file at fault (ca | cert | crl | client_ca)."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


def tls_client_context(*, ca: str | None = None, verify: bool = True, cert: str | None = None,
                       key: str | None = None, min_version: str = "1.2",
                       crl: str | None = None) -> ssl.SSLContext:  # fmt: skip
    """A client context for one carrier target: its CA bundle (None: the system's), an optional client
    certificate for mutual TLS, optional CRLs (PEM) that the carrier's certificate is checked against.
    Raises TlsSetupError on unreadable or invalid files."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError("ca", f"cannot load the CA bundle: {_why(exc)}") from exc
    ctx.minimum_version = TLS_VERSIONS[min_version]
    if crl is not None:
        _load_crls(ctx, crl)
    if not verify:  # the caller logged it: this is an explicit choice in the config
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError("cert", f"cannot load the client certificate and key: {_why(exc)}") from exc
    return ctx


def _load_crls(ctx: ssl.SSLContext, path: str) -> None:
    """Check the peer's certificate against the CRLs in `path` (PEM). Only CRL blocks are accepted: the
    same OpenSSL call would silently add a certificate found there to the trusted CAs."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            kinds = _PEM_BLOCK_RE.findall(f.read())
    except OSError as exc:
        raise TlsSetupError("crl", f"cannot read the CRL file: {_why(exc)}") from exc
    if not kinds or any(kind != "X509 CRL" for kind in kinds):
        found = ", ".join(sorted(set(kinds))) or "no PEM block (a DER CRL converts with `openssl crl " \
            "-inform DER -outform PEM`)"
        raise TlsSetupError("crl", f"expected PEM blocks 'X509 CRL' only, found: {found}")
    try:
        ctx.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError("crl", f"cannot load the CRLs: {_why(exc)}") from exc
    # The leaf only: CRLs of the intermediate and root CAs are rarely published to a carrier's peers, and
    # CRL_CHECK_CHAIN would refuse every handshake without them.
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


_PEM_BLOCK_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return str(getattr(exc, "strerror", None) or exc)


def _new_framer(limits: Any) -> StreamFramer:
    return StreamFramer(limits)


class _Connection(asyncio.Protocol):
    """One TCP/TLS connection: frames bytes into messages, answers RFC 5626 CRLF pings. An inbound one was
    admitted (ACL, caps) by StreamEndpoint._accept_loop before its handshake and holds a ConnectionTable slot
    until it goes."""

    def __init__(self, endpoint: StreamEndpoint, peer: Addr | None = None) -> None:
        self.endpoint = endpoint
        self.framer = _new_framer(endpoint.limits)
        self.transport: asyncio.Transport | None = None
        self.inbound = peer is not None
        self.peer: Addr = peer if peer is not None else ("", 0)
        self.slot = self.inbound  # inbound: holds a ConnectionTable slot, released once when it goes
        self.last_active = time.monotonic()  # last complete message or keep-alive received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        if not self.inbound:
            peer = transport.get_extra_info("peername")
            self.peer = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        self.last_active = time.monotonic()
        self.endpoint._connections[self.peer] = self

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone()

    def gone(self) -> None:
        """Forget the connection and give its slot back (idempotent: a failed handshake may call it too)."""
        endpoint = self.endpoint
        if endpoint._connections.get(self.peer) is self:
            del endpoint._connections[self.peer]
        if self.slot:
            self.slot = False
            endpoint.table.release(self.peer[0])

    def data_received(self, data: bytes) -> None:
        try:
            items = self.framer.feed(data)
        except Exception as exc:  # a framer bug must close this connection, not the process
            log.warning("closing %s connection from %s: framing failed: %r", self.endpoint.transport,
                        self.peer, exc)
            self.close()
            return
        if not items:
            return
        self.last_active = time.monotonic()
        handler, endpoint, peer = self.endpoint.handler, self.endpoint, self.peer
        for item in items:
            if isinstance(item, KeepAlive):
                if item.ping:  # RFC 5626 §3.5.1: answer a CRLFCRLF ping with a CRLF pong
                    self.write(b"\r\n")
                continue
            try:
                handler.on_message(endpoint, item, peer)
            except Exception:
                log.exception("unhandled error on a %s message from %s", endpoint.transport, peer)
            if getattr(item, "fatal", False):  # framing lost: RFC 3261 §18.3, close the connection
                self.close()  # after what the handler answered (513, 400): close() flushes it first
                return

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class StreamEndpoint(Endpoint):
    """A TCP (or TLS) server; `send(data, addr)` reuses the peer's connection or opens one."""

    def __init__(
        self,
        side: str,
        host: str,
        port: int,
        handler: Handler,
        *,
        tls: ssl.SSLContext | None = None,
        client_tls: ssl.SSLContext | None = None,
        limits: Any = None,
        connections: ConnectionTable | None = None,
    ) -> None:
        super().__init__(side, host, port, "tls" if tls is not None else "tcp", reliable=True)
        self.handler = handler
        self.limits = limits  # message size limits of the framers of new connections
        self.table = connections if connections is not None else ConnectionTable()
        self._tls = tls
        self._client_tls = client_tls
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._connections: dict[Addr, _Connection] = {}
        self._connecting: dict[Addr, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio's create_server: "::" does not also take IPv4
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((self.host, self.port))
            sock.listen(ACCEPT_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self.port = int(sock.getsockname()[1])
        self._acceptor = loop.create_task(self._accept_loop(sock))
        self._sweeper = loop.create_task(self._sweep_idle())

    async def _accept_loop(self, listener: socket.socket) -> None:
        """Accept connections one by one and admit them before anything else happens on them (no byte read,
        no TLS handshake): the handler's ACL, then the caps. A refused one is reset at once."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE and the like: say so, breathe, go on
                log.warning("%s %s: accept failed: %s", self.side, self.transport, exc)
                await asyncio.sleep(0.1)
                continue
            peer: Addr = (str(address[0]), int(address[1]))
            refused = self._admit(peer)
            if refused is not None:
                with contextlib.suppress(OSError):  # RST rather than FIN: nothing lingers on either side
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                self._report(peer, refused)
                continue
            task = loop.create_task(self._serve(sock, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket, peer: Addr) -> None:
        """Hand an admitted socket to the loop (TLS: the handshake first, within HANDSHAKE_TIMEOUT_S)."""
        conn = _Connection(self, peer)
        try:
            if self._tls is None:
                await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, sock)
            else:
                await asyncio.get_running_loop().connect_accepted_socket(
                    lambda: conn, sock, ssl=self._tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
        except (OSError, TimeoutError, ConnectionError) as exc:  # the loop has closed the socket
            why = getattr(exc, "reason", None) or exc or type(exc).__name__
            log.info("%s: %s connection from %s:%s failed: %s", self.side, self.transport, *peer, why)
            conn.gone()
        except BaseException:  # cancelled (the endpoint closes): the loop closes the socket too
            conn.gone()
            raise

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        return self._tls

    @tls_context.setter
    def tls_context(self, context: ssl.SSLContext) -> None:
        """A new server context (reloaded certificate, key or client_ca): used from the next connection."""
        if self._tls is None:
            raise ValueError("a TCP listener cannot become a TLS one without a restart")
        self._tls = context

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def _admit(self, peer: Addr) -> str | None:
        """Whether an inbound connection from `peer` may stay: the handler's ACL, then the caps."""
        accept = getattr(self.handler, "accept_connection", None)
        try:
            if accept is not None and not accept(self, peer):
                return REFUSED_UNKNOWN_SOURCE
        except Exception:
            log.exception("connection ACL failed for %s:%s: refused", peer[0], peer[1])
            return REFUSED_UNKNOWN_SOURCE
        return self.table.admit(peer[0])

    def _report(self, peer: Addr, reason: str) -> None:
        hook = getattr(self.handler, "connection_refused", None)
        if hook is None:
            return
        try:
            hook(self, peer, reason)
        except Exception:
            log.exception("reporting a refused %s connection from %s:%s", self.transport, peer[0], peer[1])

    async def _sweep_idle(self) -> None:
        """Close inbound connections idle for `idle_timeout_s`, except those a call still needs (the handler
        would have no way back to a dialer behind NAT, or would send its BYE to a port nobody listens on)."""
        while True:
            timeout = self.table.limits.idle_timeout_s
            await asyncio.sleep(max(0.05, min(timeout / 4, 10.0)))
            try:
                self._close_idle(self.table.limits.idle_timeout_s)
            except Exception:
                log.exception("%s %s: idle connection sweep failed", self.side, self.transport)

    def _close_idle(self, timeout: float) -> None:
        cutoff = time.monotonic() - timeout
        idle = [c for c in self._connections.values() if c.inbound and c.last_active < cutoff]
        if not idle:
            return
        in_use = getattr(self.handler, "peers_in_use", None)
        keep = in_use(self) if in_use is not None else set()
        for conn in idle:
            if conn.peer in keep:
                continue
            log.debug("%s %s: closing idle connection from %s:%s", self.side, self.transport, *conn.peer)
            conn.close()
            self._report(conn.peer, CLOSED_IDLE)

    def send(self, data: bytes, addr: Addr) -> None:
        conn = self._connections.get(addr)
        if conn is not None:
            conn.write(data)
            return
        pending = self._connecting.get(addr)
        if pending is not None:
            if sum(map(len, pending)) < _MAX_PENDING:
                pending.append(data)
            return
        self._connecting[addr] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client_tls_for(self, addr: Addr) -> ClientTls:
        """The handler's settings for this peer (a configured carrier target), else system CAs and the
        peer's address as the name to verify."""
        lookup = getattr(self.handler, "tls_client", None)
        found = lookup(self, addr) if lookup is not None else None
        if found is not None:
            return cast(ClientTls, found)
        if self._client_tls is None:
            self._client_tls = ssl.create_default_context()
        return ClientTls(self._client_tls, addr[0])

    async def _connect(self, addr: Addr) -> None:
        loop = asyncio.get_running_loop()
        tls = self._client_tls_for(addr) if self.transport == "tls" else None
        try:
            if tls is None:
                opening = loop.create_connection(lambda: _Connection(self), addr[0], addr[1])
            else:
                opening = loop.create_connection(lambda: _Connection(self), addr[0], addr[1], ssl=tls.context,
                                                 server_hostname=tls.server_name)  # fmt: skip
            _, conn = await asyncio.wait_for(opening, CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self._connecting.pop(addr, None)
            reason = failure_reason(exc)
            detail = getattr(exc, "verify_message", None) or str(exc) or type(exc).__name__
            if tls is not None and reason != REASON_CONNECT:
                log.warning("tls connection to %s:%s (verifying %r) failed: %s: %s", addr[0], addr[1],
                            tls.server_name, reason, detail)  # fmt: skip
            else:
                log.info("%s connection to %s:%s failed: %s", self.transport, addr[0], addr[1], detail)
            self._report_failure(addr, ConnectFailure(self.transport, reason, detail))
            return
        # The connection registered itself under the peer address it reports.
        for data in self._connecting.pop(addr, []):
            conn.write(data)
        if addr not in self._connections:
            self._connections[addr] = conn

    def _report_failure(self, addr: Addr, failure: ConnectFailure) -> None:
        hook = getattr(self.handler, "on_connect_failed", None)
        if hook is None:
            return
        try:
            hook(self, addr, failure)
        except Exception:  # the handler's bug must not kill this task silently
            log.exception("handling a failed %s connection to %s:%s", self.transport, addr[0], addr[1])

    async def close(self) -> None:
        for task in (self._sweeper, self._acceptor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sweeper = self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self._connections.values()):
            conn.close()
        for task in list(self._tasks):
            task.cancel()


def tls_server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context from a PEM certificate chain and key. With `client_ca` (a PEM CA bundle),
    mutual TLS: a peer without a certificate issued by one of those CAs fails the handshake, sends nothing."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError("cert", f"cannot load the certificate and key: {_why(exc)}") from exc
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError("client_ca", f"cannot load the CA bundle: {_why(exc)}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def open_stream_endpoint(
    side: str,
    host: str,
    port: int,
    handler: Handler,
    *,
    tls: ssl.SSLContext | None = None,
    limits: Any = None,
    connections: ConnectionTable | None = None,
) -> StreamEndpoint:
    """Listen for TCP (or TLS when `tls` is given) on host:port (0 = any free port). `connections`: the
    process's table of inbound connections (shared caps); by default one of this endpoint's own."""
    endpoint = StreamEndpoint(side, host, port, handler, tls=tls, limits=limits, connections=connections)
    await endpoint.start()
    return endpoint
