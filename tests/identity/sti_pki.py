"""Test STI PKI and x5u web server: a root CA, an intermediate and a leaf with the TNAuthList extension
(RFC 8226), made with `cryptography`, and a local HTTPS server (its own web CA) serving x5u documents.

Test helper only: keys are generated per test run and never leave the test's temporary directory.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TN_AUTH_LIST_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26")


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def tn_auth_list_der(
    spcs: Sequence[str] = (), ranges: Sequence[tuple[str, int]] = (), numbers: Sequence[str] = ()
) -> bytes:
    """DER of a TNAuthorizationList (RFC 8226 §9, EXPLICIT TAGS), written independently of the parser."""
    entries = [_der(0xA0, _der(0x16, spc.encode())) for spc in spcs]
    for start, count in ranges:
        raw = count.to_bytes((count.bit_length() + 8) // 8, "big")
        entries.append(_der(0xA1, _der(0x30, _der(0x16, start.encode()) + _der(0x02, raw))))
    entries += [_der(0xA2, _der(0x16, number.encode())) for number in numbers]
    return _der(0x30, b"".join(entries))


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _cert(
    subject: str,
    key: object,
    issuer: str,
    issuer_key: object,
    *,
    ca: bool,
    path_length: int | None = None,
    tn_auth: bytes | None = None,
    days: float = 30,
    start_days: float = 1,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()  # type: ignore[attr-defined]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=start_days))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),  # type: ignore[attr-defined]
            critical=False,
        )
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    else:
        usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    builder = builder.add_extension(usage, critical=True)
    if tn_auth is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(TN_AUTH_LIST_OID, tn_auth), critical=False)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: object) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
        serialization.NoEncryption(),
    )


@dataclass
class StiPki:
    """A root, an intermediate and an STI leaf (ES256 key, TNAuthList) chained root → intermediate → leaf."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey
    inter: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate

    @property
    def chain_pem(self) -> bytes:
        """What an x5u URL serves: the leaf, then the intermediate."""
        return pem(self.leaf, self.inter)

    def write(self, directory: Path) -> dict[str, Path]:
        """root.pem, inter.pem, chain.pem (leaf + intermediate), leaf.pem, leaf.key in `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        files = {
            "root": pem(self.root),
            "inter": pem(self.inter),
            "chain": self.chain_pem,
            "leaf": pem(self.leaf),
        }
        out = {}
        for name, data in files.items():
            (directory / f"{name}.pem").write_bytes(data)
            out[name] = directory / f"{name}.pem"
        (directory / "leaf.key").write_bytes(key_pem(self.leaf_key))
        out["key"] = directory / "leaf.key"
        return out


def make_pki(
    *,
    name: str = "sipfilter test",
    spcs: Sequence[str] = ("709J",),
    ranges: Sequence[tuple[str, int]] = (),
    numbers: Sequence[str] = (),
    tn_auth: bool = True,
    leaf_days: float = 30,
    leaf_start_days: float = 1,
    rsa_leaf: bool = False,
) -> StiPki:
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key: object = (
        rsa.generate_private_key(65537, 2048) if rsa_leaf else ec.generate_private_key(ec.SECP256R1())
    )
    root = _cert(
        f"{name} STI root", root_key, f"{name} STI root", root_key, ca=True, path_length=1, days=3650
    )
    inter = _cert(
        f"{name} STI intermediate", inter_key, f"{name} STI root", root_key, ca=True, path_length=0, days=1800
    )
    tn = tn_auth_list_der(spcs, ranges, numbers) if tn_auth else None
    leaf = _cert(
        f"{name} STI leaf",
        leaf_key,
        f"{name} STI intermediate",
        inter_key,
        ca=False,
        tn_auth=tn,
        days=leaf_days,
        start_days=leaf_start_days,
    )
    return StiPki(root_key, root, inter_key, inter, leaf_key, leaf)  # type: ignore[arg-type]


# -- the x5u web server ------------------------------------------------------------------------------------


@dataclass
class X5uServer:
    """HTTPS on 127.0.0.1 serving `documents` (path → bytes); `delay_s` holds every answer that long; hits
    counts GETs per path. `ca_file` is the web CA its certificate chains to (give it to the fetcher)."""

    directory: Path
    documents: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)  # path → HTTP status to answer instead
    delay_s: float = 0.0
    hits: dict[str, int] = field(default_factory=dict)
    port: int = 0
    ca_file: Path = Path()
    _server: http.server.ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def start(self) -> X5uServer:
        web_key = ec.generate_private_key(ec.SECP256R1())
        web_ca = _cert("x5u web CA", web_key, "x5u web CA", web_key, ca=True, path_length=0, days=30)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _cert(
            "127.0.0.1",
            server_key,
            "x5u web CA",
            web_key,
            ca=False,
            days=30,
            extra=[
                (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
                (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            ],
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.directory / "x5u-web-ca.pem"
        self.ca_file.write_bytes(pem(web_ca))
        (self.directory / "x5u-web.pem").write_bytes(pem(server))
        (self.directory / "x5u-web.key").write_bytes(key_pem(server_key))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.directory / "x5u-web.pem", self.directory / "x5u-web.key")
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                owner.hits[path] = owner.hits.get(path, 0) + 1
                if owner.delay_s:
                    time.sleep(owner.delay_s)
                body = owner.documents.get(path)
                status = owner.status.get(path, 200 if body is not None else 404)
                self.send_response(status)
                self.send_header("Content-Type", "application/pem-certificate-chain")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                if status == 200 and body:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        httpd.handle_error = lambda *args: None  # type: ignore[method-assign] # clients that hang up early
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self.port = int(httpd.server_address[1])
        self._server = httpd
        threading.Thread(target=httpd.serve_forever, name="x5u-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def x5u_server(directory: Path, **documents: bytes) -> Iterator[X5uServer]:
    server = X5uServer(directory, dict(documents)).start()
    try:
        yield server
    finally:
        server.stop()
