"""TLS to the carrier through a real `sipfilter run`: the app wires the TLS endpoint to the B2BUA's target
settings, the startup probe finds the untrusted carrier, /metrics and the log say why, calls go elsewhere.
Its own TLS listener, with `client_ca`, answers only carriers showing a certificate from that CA."""

from __future__ import annotations

import re
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_no_open_relay import LEGIT_SOURCE, Listener, _wait_for, invite
from test_tls import NAME, Pki, pki  # noqa: F401  (the module-scoped PKI fixture)

from sipfilter.transport.stream import tls_server_context

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from sipp_harness import Sipfilter, sipfilter_available

_MISSING = sipfilter_available()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]


@dataclass
class TlsCarrier:
    """A threaded TLS SIP server on loopback: OPTIONS 200, INVITE 486; records the INVITEs it read."""

    cert: tuple[Path, Path]
    invites: list[bytes] = field(default_factory=list)
    sock: socket.socket = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.ctx = tls_server_context(str(self.cert[0]), str(self.cert[1]))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                buf = b""
                while not self._stop.is_set():
                    data = conn.recv(65535)
                    if not data:
                        return
                    buf += data
                    while b"\r\n\r\n" in buf:  # our requests carry no body
                        msg, buf = buf.split(b"\r\n\r\n", 1)
                        if msg.startswith(b"INVITE "):
                            self.invites.append(msg)
                            conn.sendall(_answer(msg, 486, "Busy Here"))
                        elif msg.startswith(b"OPTIONS "):
                            conn.sendall(_answer(msg, 200, "OK"))
        except (OSError, ssl.SSLError):
            return  # a client that refused our certificate, or went away

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def _answer(request: bytes, code: int, phrase: str) -> bytes:
    head = request.decode().split("\r\n")[1:]
    keep = [h for h in head if re.match(r"(?i)(via|from|to|call-id|cseq)\s*:", h)]
    keep = [h + ";tag=c" if h.lower().startswith("to:") and "tag=" not in h else h for h in keep]
    return (f"SIP/2.0 {code} {phrase}\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode()


@dataclass
class Run:
    inside: tuple[str, int]
    rogue: TlsCarrier
    good: TlsCarrier
    dialer: Listener
    proc: Sipfilter
    outside_port: int  # UDP, and TLS with `client_ca`: carriers must show a certificate from `pki.ca`


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Run]:  # noqa: F811
    from sipfilter_provision import provision
    from sipp_harness import SipfilterPorts, free_ports, sipfilter_config, write_config

    rogue, good, dialer = TlsCarrier(pki.rogue), TlsCarrier(pki.good), Listener(LEGIT_SOURCE)
    proc = None
    try:
        workdir = tmp_path_factory.mktemp("tls-run")
        ports = SipfilterPorts(*free_ports(3))
        tls = {"ca": str(pki.ca), "server_name": NAME}
        targets = [{"uri": f"sip:127.0.0.1:{c.port}", "transport": "tls", "priority": i + 1, "tls": tls}
                   for i, c in enumerate((rogue, good))]  # fmt: skip
        outside = [{"transport": "udp", "host": "127.0.0.1", "port": ports.outside},
                   {"transport": "tls", "host": "127.0.0.1", "port": ports.outside,
                    "cert": str(pki.client[0]), "key": str(pki.client[1]),
                    "client_ca": str(pki.ca)}]  # fmt: skip
        config = sipfilter_config(workdir, ports, [], trunk={"targets": targets}, sip={"outside": outside})
        config_path = write_config(workdir / "sipfilter.yaml", config)
        provision(config_path, workdir)
        dialer.start()
        proc = Sipfilter(config_path, ports, workdir / "run").start()
        yield Run(("127.0.0.1", ports.inside), rogue, good, dialer, proc, ports.outside)
    finally:
        if proc is not None:
            proc.stop()
        for closable in (rogue, good, dialer):
            closable.close()


def _failures(proc: Sipfilter) -> float:
    found = re.findall(r"(?m)^sipfilter_tls_handshake_failures_total\{([^}]*)\} (\S+)", proc.metrics())
    wanted = ('reason="unknown-ca"', 'trunk="dialer"')
    return sum(float(v) for labels, v in found if all(w in labels for w in wanted))


def test_probe_finds_the_untrusted_carrier_and_calls_go_to_the_trusted_one(run: Run) -> None:
    assert _wait_for(lambda: _failures(run.proc) >= 1, 10.0), run.proc.log_tail()
    log = run.proc.log_tail()
    why = rf"tls connection to 127\.0\.0\.1:{run.rogue.port} \(verifying '{NAME}'\) failed: unknown-ca"
    assert re.search(why, log), log
    run.dialer.sock.sendto(invite(f"sip:+33612000001@{run.inside[0]}:{run.inside[1]}",
                                  run.dialer.sock.getsockname()), run.inside)  # fmt: skip
    assert _wait_for(lambda: any(d.startswith(b"SIP/2.0 486") for d, _ in run.dialer.received), 10.0), log
    assert len(run.good.invites) == 1 and run.rogue.invites == []


OPTIONS = (b"OPTIONS sip:sipfilter.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKmtlsrun\r\n"
           b"Max-Forwards: 70\r\nFrom: <sip:carrier@127.0.0.1>;tag=1\r\nTo: <sip:sipfilter.test>\r\n"
           b"Call-ID: mtls-run-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")  # fmt: skip


def _options_over_tls(port: int, pki: Pki, cert: tuple[Path, Path] | None) -> bytes:  # noqa: F811
    """One OPTIONS to sipfilter's outside TLS listener from a carrier showing `cert` (or none): the answer, or
    b"" when the handshake is refused or the connection closed."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="sipfilter.test") as conn:  # fmt: skip
            conn.sendall(OPTIONS)
            return conn.recv(65536)
    except OSError:  # ssl.SSLError included: TLS 1.3 reports the refusal on the first read
        return b""


def test_the_tls_listener_with_client_ca_answers_only_carriers_with_its_certificates(
    run: Run, pki: Pki  # noqa: F811
) -> None:
    assert _options_over_tls(run.outside_port, pki, None) == b""
    assert _options_over_tls(run.outside_port, pki, pki.rogue) == b""
    assert _options_over_tls(run.outside_port, pki, pki.good).startswith(b"SIP/2.0 200 ")
