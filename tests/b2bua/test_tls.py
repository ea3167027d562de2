"""TLS to the carrier with certificate verification: a throwaway PKI made with the `openssl` CLI at test time,
a small asyncio TLS carrier on loopback, the B2BUA's real TLS endpoint towards it, a recording dialer side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from b2bua_rig import DIALER, FakeEndpoint, StubPolicy, answer, invite, write_config

from sipfilter import metrics
from sipfilter.b2bua.core import B2BUA, compile_runtime
from sipfilter.b2bua.observe import Observer
from sipfilter.cli import main as cli_main
from sipfilter.config import ConfigError
from sipfilter.configure import load_config
from sipfilter.sip import ParseError, Response, parse
from sipfilter.transport.stream import (
    REASON_CRL,
    REASON_EXPIRED,
    REASON_HOSTNAME,
    REASON_REVOKED,
    REASON_UNKNOWN_CA,
    StreamEndpoint,
    open_stream_endpoint,
    tls_server_context,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI makes the test PKI")

NAME = "carrier.test"  # the only name in the carrier's certificates (no IP SAN)


# --- a throwaway PKI --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA our config trusts
    other_ca: Path  # a CA it does not
    good: tuple[Path, Path]  # carrier cert + key signed by `ca`
    rogue: tuple[Path, Path]  # same name, signed by `other_ca`
    expired: tuple[Path, Path]  # signed by `ca`, validity over
    client: tuple[Path, Path]  # our client certificate for mutual TLS, signed by `ca`
    revoked: tuple[Path, Path]  # signed by `ca`, then revoked
    crl: Path  # `ca`'s CRL listing `revoked`, valid for a day
    stale_crl: Path  # the same CRL, past its nextUpdate


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _new_ca(d: Path, name: str) -> None:
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip


def _new_leaf(d: Path, name: str, ca: str, days: str = "2", cn: str = NAME) -> tuple[Path, Path]:
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName=DNS:{cn}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")  # fmt: skip
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", days, "-extfile", ext.name)  # fmt: skip
    return d / f"{name}.pem", d / f"{name}.key"


def _revoke_and_publish(d: Path, revoked: Path) -> tuple[Path, Path]:
    """`ca` revokes the certificate and publishes its CRL: one valid for a day, one already stale."""
    (d / "ca.cnf").write_text("[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\n"
                              "default_md = sha256\n")  # fmt: skip
    (d / "index.txt").write_text("")
    (d / "crlnumber").write_text("01\n")
    signer = ("-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.pem")
    _openssl(d, "ca", *signer, "-revoke", revoked.name)
    _openssl(d, "ca", *signer, "-gencrl", "-crldays", "1", "-out", "crl.pem")
    # Stale from the start (nextUpdate a minute ago): no test waits on the clock for it.
    _openssl(d, "ca", *signer, "-gencrl", "-crl_lastupdate", _asn1_time(-120),
             "-crl_nextupdate", _asn1_time(-60), "-out", "stale-crl.pem")  # fmt: skip
    return d / "crl.pem", d / "stale-crl.pem"


def _asn1_time(offset_s: int) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() + offset_s))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _new_ca(d, "ca")
    _new_ca(d, "other-ca")
    revoked = _new_leaf(d, "revoked", "ca")
    crl, stale_crl = _revoke_and_publish(d, revoked[0])
    return Pki(d / "ca.pem", d / "other-ca.pem", _new_leaf(d, "good", "ca"),
               _new_leaf(d, "rogue", "other-ca"), _new_leaf(d, "expired", "ca", days="-1"),
               _new_leaf(d, "client", "ca", cn="sipfilter.test"), revoked, crl, stale_crl)  # fmt: skip


# --- a TLS carrier that answers every INVITE 486 ----------------------------------------------------------


@dataclass
class Carrier:
    port: int
    invites: list[Any] = field(default_factory=list)
    peer_certs: list[Any] = field(default_factory=list)


@pytest.fixture
async def carriers(pki: Pki) -> AsyncIterator[Callable[..., Any]]:
    servers: list[asyncio.AbstractServer] = []

    async def start(cert: tuple[Path, Path], *, client_ca: Path | None = None) -> Carrier:
        ctx = tls_server_context(str(cert[0]), str(cert[1]))
        if client_ca is not None:  # mutual TLS: the carrier wants our certificate
            ctx.load_verify_locations(str(client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        carrier = Carrier(0)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            carrier.peer_certs.append(writer.get_extra_info("peercert"))
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    size = re.search(rb"(?im)^content-length\s*:\s*(\d+)", head)
                    body = await reader.readexactly(int(size.group(1))) if size else b""
                    msg = parse(head + body)
                    if getattr(msg, "method", "") == "INVITE":
                        carrier.invites.append(msg)
                        writer.write(answer(msg, 486))
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
        servers.append(server)
        carrier.port = server.sockets[0].getsockname()[1]
        return carrier

    try:
        yield start
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


# --- the B2BUA with a real TLS endpoint towards the carriers ----------------------------------------------


class Recorder(Observer):
    def __init__(self) -> None:
        self.failed: list[tuple[str, str, str, str]] = []
        self.failovers: list[str] = []

    def connect_failed(self, trunk: str, target: str, transport: str, reason: str) -> None:
        self.failed.append((trunk, target, transport, reason))

    def failover(self, trunk: str, target: str) -> None:
        self.failovers.append(target)


@dataclass
class TlsRig:
    b2b: B2BUA
    inside: FakeEndpoint
    outside: StreamEndpoint
    obs: Recorder

    def call(self) -> None:
        self.b2b.on_datagram(self.inside, invite(), DIALER)

    async def final(self, timeout_s: float = 8.0) -> Response:
        """The dialer's final answer (a real-time wait bounded by `timeout_s`, far below Timer B)."""
        for _ in range(int(timeout_s / 0.02)):
            finals = [m for m in self.inside.take() if isinstance(m, Response) and m.status >= 200]
            if finals:
                return finals[0]
            await asyncio.sleep(0.02)
        raise AssertionError("no final answer to the dialer")


def tls_target(port: int, prio: int = 1, **tls: Any) -> dict[str, Any]:
    return {"uri": f"sip:127.0.0.1:{port}", "transport": "tls", "priority": prio, "weight": 1,
            "tls": {k: str(v) if isinstance(v, Path) else v for k, v in tls.items()}}  # fmt: skip


@pytest.fixture
async def make_rig(tmp_path: Path, pki: Pki) -> AsyncIterator[Callable[..., Any]]:
    endpoints: list[StreamEndpoint] = []

    async def make(*targets: dict[str, Any]) -> TlsRig:
        config = load_config(write_config(tmp_path, targets=list(targets)))
        obs = Recorder()
        inside = FakeEndpoint("inside", 5060)
        b2b = B2BUA(compile_runtime(config, StubPolicy(), store=None), parse=parse, parse_error=ParseError,
                    endpoints={"inside": [inside]}, observer=obs)  # fmt: skip
        ours = tls_server_context(str(pki.good[0]), str(pki.good[1]))  # our listener's (unused here)
        outside = await open_stream_endpoint("outside", "127.0.0.1", 0, b2b, tls=ours)
        endpoints.append(outside)
        b2b.add_endpoint(outside)
        return TlsRig(b2b, inside, outside, obs)

    try:
        yield make
    finally:
        for ep in endpoints:
            await ep.close()


# --- behaviour --------------------------------------------------------------------------------------------


async def test_trusted_ca_and_right_name_relays_the_call(pki: Pki, carriers: Any, make_rig: Any) -> None:
    carrier = await carriers(pki.good)
    rig = await make_rig(tls_target(carrier.port, ca=pki.ca, server_name=NAME))
    rig.call()
    final = await rig.final()
    assert final.status == 486  # the carrier's own answer, relayed
    assert len(carrier.invites) == 1 and rig.obs.failed == []
    # The one connection is reused: a second call opens no new handshake.
    rig.call()
    assert (await rig.final()).status == 486 and len(carrier.invites) == 2 and len(carrier.peer_certs) == 1


@pytest.mark.parametrize(
    ("cert", "tls", "reason"),
    [
        ("rogue", {"server_name": NAME}, REASON_UNKNOWN_CA),  # signed by a CA we do not trust
        ("good", {"server_name": "other.test"}, REASON_HOSTNAME),  # valid, for another name
        ("good", {}, REASON_HOSTNAME),  # default name: the URI host 127.0.0.1, not in the certificate
        ("expired", {"server_name": NAME}, REASON_EXPIRED),
    ],
)
async def test_a_carrier_failing_verification_is_a_dead_target(
    pki: Pki, carriers: Any, make_rig: Any, cert: str, tls: dict[str, Any], reason: str
) -> None:
    carrier = await carriers(getattr(pki, cert))
    rig = await make_rig(tls_target(carrier.port, ca=pki.ca, **tls))
    rig.call()
    final = await rig.final()
    assert final.status == 503  # at once, not after Timer B's 32 s
    assert carrier.invites == []
    target = f"sip:127.0.0.1:{carrier.port}"
    assert rig.obs.failed == [("dialer", target, "tls", reason)]
    assert [s.up for s in rig.b2b.rt.pools["dialer"].states] == [False]
    assert rig.b2b.client_tx == {} or all(c.final for c in rig.b2b.client_tx.values())


async def test_a_refused_connection_fails_at_once_but_is_no_tls_failure(pki: Pki, make_rig: Any) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rig = await make_rig(tls_target(port, ca=pki.ca, server_name=NAME))
    rig.b2b.obs = metrics.PrometheusObserver(metrics.CALLS)
    rig.call()
    assert (await rig.final()).status == 503  # not after Timer B
    labels = {"trunk": "dialer", "target": f"sip:127.0.0.1:{port}", "reason": "connect"}
    assert metrics.REGISTRY.get_sample_value("sipfilter_tls_handshake_failures_total", labels) is None


async def test_a_failed_handshake_fails_over_to_the_next_target(
    pki: Pki, carriers: Any, make_rig: Any
) -> None:
    rogue, good = await carriers(pki.rogue), await carriers(pki.good)
    rig = await make_rig(tls_target(rogue.port, 1, ca=pki.ca, server_name=NAME),
                         tls_target(good.port, 2, ca=pki.ca, server_name=NAME))  # fmt: skip
    rig.call()
    assert (await rig.final()).status == 486
    assert rogue.invites == [] and len(good.invites) == 1
    assert rig.obs.failovers == [f"sip:127.0.0.1:{rogue.port}"]


async def test_handshake_failures_are_counted_in_prometheus(pki: Pki, carriers: Any, make_rig: Any) -> None:
    carrier = await carriers(pki.rogue)
    rig = await make_rig(tls_target(carrier.port, ca=pki.ca, server_name=NAME))
    rig.b2b.obs = metrics.PrometheusObserver(metrics.CALLS)
    labels = {"trunk": "dialer", "target": f"sip:127.0.0.1:{carrier.port}", "reason": REASON_UNKNOWN_CA}
    rig.call()
    assert (await rig.final()).status == 503
    assert metrics.REGISTRY.get_sample_value("sipfilter_tls_handshake_failures_total", labels) == 1.0


async def test_verify_false_relays_to_an_untrusted_carrier_with_a_warning(
    pki: Pki, carriers: Any, make_rig: Any, caplog: pytest.LogCaptureFixture
) -> None:
    carrier = await carriers(pki.rogue)
    with caplog.at_level(logging.WARNING, logger="sipfilter.config"):
        rig = await make_rig(tls_target(carrier.port, verify=False))
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)
    rig.call()
    assert (await rig.final()).status == 486 and len(carrier.invites) == 1


async def test_mutual_tls_presents_our_client_certificate(pki: Pki, carriers: Any, make_rig: Any) -> None:
    carrier = await carriers(pki.good, client_ca=pki.ca)
    rig = await make_rig(tls_target(carrier.port, ca=pki.ca, server_name=NAME, cert=pki.client[0],
                                    key=pki.client[1], min_version="1.3"))  # fmt: skip
    rig.call()
    assert (await rig.final()).status == 486
    (peer,) = carrier.peer_certs
    assert dict(x[0] for x in peer["subject"])["commonName"] == "sipfilter.test"


async def test_a_revoked_carrier_certificate_is_a_dead_target(pki: Pki, carriers: Any, make_rig: Any) -> None:
    revoked, good = await carriers(pki.revoked), await carriers(pki.good)
    rig = await make_rig(tls_target(revoked.port, 1, ca=pki.ca, server_name=NAME, crl=pki.crl),
                         tls_target(good.port, 2, ca=pki.ca, server_name=NAME, crl=pki.crl))  # fmt: skip
    rig.call()
    assert (await rig.final()).status == 486  # the certificate not on the CRL serves the call
    assert revoked.invites == [] and len(good.invites) == 1
    assert rig.obs.failed == [("dialer", f"sip:127.0.0.1:{revoked.port}", "tls", REASON_REVOKED)]


async def test_without_its_crl_a_revoked_certificate_still_verifies(
    pki: Pki, carriers: Any, make_rig: Any
) -> None:
    carrier = await carriers(pki.revoked)
    rig = await make_rig(tls_target(carrier.port, ca=pki.ca, server_name=NAME))
    rig.call()
    assert (await rig.final()).status == 486 and len(carrier.invites) == 1


async def test_a_stale_crl_fails_closed(pki: Pki, carriers: Any, make_rig: Any) -> None:
    carrier = await carriers(pki.good)
    rig = await make_rig(tls_target(carrier.port, ca=pki.ca, server_name=NAME, crl=pki.stale_crl))
    assert _crl_next_update(pki.stale_crl) < time.time() - 30
    rig.call()
    assert (await rig.final()).status == 503
    assert carrier.invites == []
    assert rig.obs.failed == [("dialer", f"sip:127.0.0.1:{carrier.port}", "tls", REASON_CRL)]


def _crl_next_update(crl: Path) -> float:
    out = subprocess.run(["openssl", "crl", "-in", str(crl), "-noout", "-nextupdate"], check=True,
                         capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    return ssl.cert_time_to_seconds(out.strip().partition("=")[2])


async def test_contexts_are_built_at_load_and_rebuilt_on_reload(pki: Pki, make_rig: Any) -> None:
    rig = await make_rig(tls_target(5999, ca=pki.ca, server_name=NAME))
    target = rig.b2b.rt.config.trunks["dialer"].targets[0]
    client = rig.b2b.tls_client(rig.outside, ("127.0.0.1", 5999))
    assert client.context is target.tls.context and client.server_name == NAME
    assert rig.b2b.tls_client(rig.outside, ("127.0.0.1", 6000)) is None  # not a target: endpoint defaults
    reloaded = load_config(rig.b2b.rt.config.path)
    assert reloaded.trunks["dialer"].targets[0].tls.context is not target.tls.context
    assert reloaded.trunks["dialer"].targets[0] == target  # same settings: equal (contexts not compared)


# --- config validation ------------------------------------------------------------------------------------


def _load(tmp_path: Path, *targets: dict[str, Any]) -> Any:
    return load_config(write_config(tmp_path, targets=list(targets)))


@pytest.mark.parametrize(
    ("tls", "field_", "fragment"),
    [
        ({"ca": "missing.pem"}, "tls.ca", "no such file"),
        ({"ca": "__not_pem__"}, "tls.ca", "cannot load the CA bundle"),
        ({"cert": "__client__"}, "tls.key", "both `cert` and `key`"),
        ({"cert": "__client__", "key": "__ca__"}, "tls.cert", "cannot load the client certificate"),
        ({"min_version": 1.1}, "tls.min_version", "expected 1.2 or 1.3"),
        ({"server_name": "bad name!"}, "tls.server_name", "host name or IP"),
        ({"verfy": False}, "tls.verfy", "did you mean 'verify'"),
        ({"crl": "missing.pem"}, "tls.crl", "no such file"),
        ({"crl": "__not_pem__"}, "tls.crl", "found: no PEM block"),
        # A certificate where the CRL belongs would otherwise become a trusted CA.
        ({"crl": "__ca__"}, "tls.crl", "expected PEM blocks 'X509 CRL' only, found: CERTIFICATE"),
        ({"crl": "__crl__", "verify": False}, "tls.crl", "needs certificate verification"),
    ],
)
def test_tls_config_errors_name_file_line_and_field(
    pki: Pki, tmp_path: Path, tls: dict[str, Any], field_: str, fragment: str
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    subst = {"__not_pem__": str(junk), "__client__": str(pki.client[0]), "__ca__": str(pki.ca),
             "__crl__": str(pki.crl)}  # fmt: skip
    tls = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in tls.items()}
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, tls_target(5061, **tls))
    text = str(err.value)
    assert f"trunks.dialer.targets[0].{field_}" in text and fragment in text, text
    assert re.search(r"sipfilter\.yaml:\d+: ", text), text


def test_tls_settings_on_a_udp_target_are_refused(tmp_path: Path) -> None:
    target = tls_target(5061)
    target["transport"] = "udp"
    with pytest.raises(ConfigError, match=r"targets\[0\]\.tls: tls settings need `transport: tls`"):
        _load(tmp_path, target)


def test_two_targets_at_one_address_must_verify_it_alike(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"targets\[1\]\.tls: another target at 127.0.0.1:5061"):
        _load(tmp_path, tls_target(5061, ca=pki.ca), tls_target(5061, 2, ca=pki.other_ca))
    config = _load(tmp_path, tls_target(5061, ca=pki.ca), tls_target(5061, 2, ca=pki.ca))
    assert len(config.trunks["dialer"].targets) == 2


def test_a_tls_target_without_tls_settings_verifies_with_system_cas(tmp_path: Path) -> None:
    config = _load(tmp_path, {"uri": "sips:carrier.example", "transport": "tls"})
    (target,) = config.trunks["dialer"].targets
    assert target.tls is not None and target.tls.verify and target.tls.ca is None
    assert target.tls.context.verify_mode == ssl.CERT_REQUIRED and target.tls.context.check_hostname
    assert target.tls.context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_yaml_round_trip_of_min_version(pki: Pki, tmp_path: Path) -> None:
    path = write_config(tmp_path, targets=[tls_target(5061, ca=pki.ca)])
    cfg = yaml.safe_load(path.read_text())
    cfg["trunks"]["dialer"]["targets"][0]["tls"]["min_version"] = 1.3  # unquoted in YAML: a float
    path.write_text(yaml.safe_dump(cfg))
    tls = load_config(path).trunks["dialer"].targets[0].tls
    assert tls.min_version == "1.3" and tls.context.minimum_version == ssl.TLSVersion.TLSv1_3


# --- mutual TLS on our own listener: a peer must show a certificate from `client_ca` ---------------------

OPTIONS = (b"OPTIONS sip:sipfilter.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKmtls\r\n"
           b"Max-Forwards: 70\r\nFrom: <sip:dialer@127.0.0.1>;tag=1\r\nTo: <sip:sipfilter.test>\r\n"
           b"Call-ID: mtls-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")  # fmt: skip


class Received:
    """A handler that keeps what the listener hands over."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def on_datagram(self, endpoint: Any, data: bytes, addr: Any) -> None:
        raise AssertionError("a stream endpoint hands over parsed messages")

    def on_message(self, endpoint: Any, message: Any, addr: Any) -> None:
        self.messages.append(message)


@pytest.fixture
async def listener(pki: Pki) -> AsyncIterator[Callable[..., Any]]:
    endpoints: list[StreamEndpoint] = []

    async def start(client_ca: Path | None = None) -> tuple[StreamEndpoint, Received]:
        got = Received()
        ctx = tls_server_context(str(pki.good[0]), str(pki.good[1]), str(client_ca) if client_ca else None)
        ep = await open_stream_endpoint("inside", "127.0.0.1", 0, got, tls=ctx)
        endpoints.append(ep)
        return ep, got

    try:
        yield start
    finally:
        for ep in endpoints:
            await ep.close()


async def _delivered(port: int, pki: Pki, got: Received, cert: tuple[Path, Path] | None) -> bool:
    """Connect as a peer showing `cert` (or none) and send an OPTIONS: True once the listener handed it over,
    False when the connection fails or closes first."""
    before = len(got.messages)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=NAME), 5)
    except (OSError, TimeoutError):
        return False  # TLS 1.2 refuses during the handshake
    reading = asyncio.ensure_future(reader.read(1))  # TLS 1.3: the refusal comes as an alert after it
    try:
        writer.write(OPTIONS)
        await writer.drain()
        for _ in range(200):
            if len(got.messages) > before:
                return True
            if reading.done():
                return False
            await asyncio.sleep(0.025)
        raise AssertionError("neither delivered nor refused within 5 s")
    except OSError:
        return False
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def test_a_listener_with_client_ca_takes_only_peers_with_its_certificates(
    pki: Pki, listener: Any
) -> None:
    ep, got = await listener(client_ca=pki.ca)
    assert not await _delivered(ep.port, pki, got, None)  # no certificate
    assert not await _delivered(ep.port, pki, got, pki.rogue)  # a certificate from another CA
    assert await _delivered(ep.port, pki, got, pki.client)  # one from `client_ca`
    assert [m.call_id for m in got.messages] == ["mtls-1"]


async def test_a_listener_without_client_ca_asks_for_no_certificate(pki: Pki, listener: Any) -> None:
    ep, got = await listener()
    assert await _delivered(ep.port, pki, got, None)


def _with_listener(tmp_path: Path, pki: Pki, **listen: Any) -> Path:
    path = write_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["sip"]["inside"].append({"transport": "tls", "host": "127.0.0.1", "port": 5061,
                                 "cert": str(pki.good[0]), "key": str(pki.good[1]), **listen})  # fmt: skip
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_client_ca_is_loaded_with_the_config_and_errors_name_the_field(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(_with_listener(tmp_path, pki, client_ca=str(pki.ca)))
    assert config.sip.inside[-1].client_ca == pki.ca.resolve()
    assert cli_main(["config", "check", "--config", str(config.path)]) == 0
    listening = next(line for line in capsys.readouterr().out.splitlines() if "listening:" in line)
    assert f"tls 127.0.0.1:5061 (peers need a certificate from {pki.ca.resolve()})" in listening, listening
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    bad = (({"client_ca": str(junk)}, "client_ca", "cannot load the CA bundle"),
           ({"client_ca": str(tmp_path / "missing.pem")}, "client_ca", "missing.pem"),
           ({"cert": str(junk)}, "cert", "cannot load the certificate and key"))  # fmt: skip
    for listen, field_, fragment in bad:
        with pytest.raises(ConfigError) as err:
            load_config(_with_listener(tmp_path, pki, **listen))
        text = str(err.value)
        assert f"sip.inside[1].{field_}" in text and fragment in text, text
        assert re.search(r"sipfilter\.yaml:\d+: ", text), text
    path = write_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["sip"]["inside"][0]["client_ca"] = str(pki.ca)  # a udp listener
    path.write_text(yaml.safe_dump(cfg))
    need_tls = r"sip\.inside\[0\]\.client_ca: client certificates need `transport: tls`"
    with pytest.raises(ConfigError, match=need_tls):
        load_config(path)


class Gatekeeper(Received):
    """A handler whose ACL admits 127.0.0.2 only (as the B2BUA admits a trunk's sources)."""

    def accept_connection(self, endpoint: Any, addr: Any) -> bool:
        return bool(addr[0] == "127.0.0.2")


async def test_a_stranger_is_reset_before_any_tls_handshake(pki: Pki) -> None:
    """The ACL runs when the TCP connection is accepted: a stranger costs no handshake and holds nothing."""
    got = Gatekeeper()
    ctx = tls_server_context(str(pki.good[0]), str(pki.good[1]))
    ep = await open_stream_endpoint("inside", "127.0.0.1", 0, got, tls=ctx)
    try:
        try:  # reset at once: the connect itself may already see it
            reader, writer = await asyncio.open_connection("127.0.0.1", ep.port, local_addr=("127.0.0.1", 0))
            assert await asyncio.wait_for(reader.read(100), 3) == b""  # no ServerHello: closed first
            writer.close()
        except ConnectionResetError:
            pass
        assert ep.table.total == 0 and ep.connection_count == 0
        client = ssl.create_default_context(cafile=str(pki.ca))
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", ep.port, ssl=client, server_hostname=NAME, local_addr=("127.0.0.2", 0)), 5)
        writer.write(OPTIONS)
        await writer.drain()
        for _ in range(200):
            if got.messages:
                break
            await asyncio.sleep(0.025)
        assert [m.call_id for m in got.messages] == ["mtls-1"] and ep.table.total == 1
        writer.close()
    finally:
        await ep.close()


class Answering(Gatekeeper):
    """Answers every message on the connection it came on (as the B2BUA answers an OPTIONS)."""

    def on_message(self, endpoint: Any, message: Any, addr: Any) -> None:
        super().on_message(endpoint, message, addr)
        endpoint.send(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", addr)


def _finished_and_request_in_one_segment(port: int, pki: Pki, request: bytes) -> bytes:
    """A TLS 1.3 client that sends its Finished and its first request in one TCP segment (as a busy client
    does): the server decrypts the request right as its handshake completes. Returns the answer (or b"")."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=NAME)
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)) as raw:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        tls.write(request)
        raw.sendall(outgoing.read())  # Finished + the request
        answer = b""
        try:
            while not answer.endswith(b"\r\n\r\n"):
                data = raw.recv(65536)
                if not data:
                    break
                incoming.write(data)
                try:
                    answer += tls.read(65536)
                except ssl.SSLWantReadError:
                    continue
        except TimeoutError:
            pass
        return answer


async def test_a_request_right_behind_the_handshake_is_answered(pki: Pki) -> None:
    got = Answering()
    ctx = tls_server_context(str(pki.good[0]), str(pki.good[1]))
    ep = await open_stream_endpoint("inside", "127.0.0.1", 0, got, tls=ctx)
    try:
        answer = await asyncio.to_thread(_finished_and_request_in_one_segment, ep.port, pki, OPTIONS)
        assert answer.startswith(b"SIP/2.0 200 OK"), answer
        assert [m.call_id for m in got.messages] == ["mtls-1"]
    finally:
        await ep.close()
