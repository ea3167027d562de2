"""A trunk's `identity:` section (verify and/or sign), read and checked when the config loads.

Files (CA bundles, the signing key, its certificate) are read here, so that `config check` and a SIGHUP reload
name a bad one by file and line and a running proxy keeps its last good state; nothing is fetched.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sipfilter.config import ConfigError, Section
from sipfilter.identity.certs import load_anchors
from sipfilter.transport.stream import TlsSetupError, tls_client_context

ATTEST_DEFAULTS = ("B", "C")  # A is given only to numbers of the trunk's authorised caller-ID list


@dataclass(frozen=True, slots=True)
class VerifySettings:
    """`identity.verify`: check the dialer's SHAKEN PASSporT (docs/identity.md)."""

    ca: Path  # PEM bundle of the trusted STI root certificates
    mode: str = "enforce"  # enforce | monitor (failures relayed and kept as alerts)
    require: bool = False  # an INVITE without Identity fails identity.missing (428)
    x5u_timeout_s: float = 2.0
    x5u_cache_ttl_s: int = 3600
    x5u_failure_ttl_s: int = 10
    x5u_allowed: tuple[str, ...] = ()  # URL prefixes; empty: any https URL
    x5u_tls_ca: Path | None = None  # CAs of the x5u web servers; None: the system's
    anchors: tuple[x509.Certificate, ...] = field(default=(), compare=False, repr=False)
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class SignSettings:
    """`identity.sign`: sign INVITEs with the contact center's own STI certificate."""

    key: Path  # PEM EC P-256 private key, re-read at every (re)load
    x5u: str  # where verifiers fetch the certificate (leaf first, then intermediates)
    attest: str = "B"  # level for numbers outside the trunk's authorised caller-ID list
    cert: Path | None = None  # a local copy of the x5u certificate: checked against the key at load
    private_key: ec.EllipticCurvePrivateKey | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    verify: VerifySettings | None
    sign: SignSettings | None


def read_identity(s: Section) -> IdentityConfig:
    s.only(["verify", "sign"])
    verify = _verify(s.section("verify")) if s.has("verify") else None
    sign = _sign(s.section("sign")) if s.has("sign") else None
    if verify is None and sign is None:
        raise ConfigError("expected `verify`, `sign` or both", s.file, s.line, s.path)
    return IdentityConfig(verify, sign)


def _file(s: Section, key: str) -> Path:
    path = s.path_(key)
    if not path.is_file():
        raise s.error(key, f"no such file: {path}")
    return path


def _https_url(s: Section, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.lower().startswith("https://") or len(value) <= 8:
        raise s.error(key, f"expected an https:// URL, got {value!r}")
    if any(c in value for c in ' <>"\r\n'):
        raise s.error(key, f"the URL has a character it cannot carry in a SIP header: {value!r}")
    return value


def _verify(s: Section) -> VerifySettings:
    s.only(["ca", "mode", "require", "x5u_timeout_s", "x5u_cache_ttl_s", "x5u_failure_ttl_s", "x5u_allowed",
            "x5u_tls_ca"])  # fmt: skip
    ca = _file(s, "ca")
    try:
        anchors = tuple(load_anchors(ca.read_bytes()))
    except (OSError, ValueError) as exc:
        raise s.error("ca", f"cannot read the STI root certificates (PEM) of {ca}: {exc}") from None
    timeout = s.number("x5u_timeout_s", 2.0, lo=0.1)
    if timeout > 10:
        raise s.error("x5u_timeout_s", f"must be <= 10 (a first call waits up to this long), got {timeout:g}")
    allowed = tuple(_https_url(s, url, "x5u_allowed") for url in s.str_list("x5u_allowed", None))
    tls_ca = _file(s, "x5u_tls_ca") if s.has("x5u_tls_ca") else None
    try:
        context = tls_client_context(ca=str(tls_ca) if tls_ca else None)
    except TlsSetupError as exc:
        raise s.error("x5u_tls_ca" if tls_ca else "ca", str(exc)) from None
    return VerifySettings(
        ca=ca,
        mode=s.choice("mode", ("enforce", "monitor"), "enforce"),
        require=s.bool("require", False),
        x5u_timeout_s=timeout,
        x5u_cache_ttl_s=s.int("x5u_cache_ttl_s", 3600, lo=60, hi=86400),
        x5u_failure_ttl_s=s.int("x5u_failure_ttl_s", 10, lo=1, hi=3600),
        x5u_allowed=allowed,
        x5u_tls_ca=tls_ca,
        anchors=anchors,
        tls_context=context,
    )


def _sign(s: Section) -> SignSettings:
    s.only(["key", "x5u", "attest", "cert"])
    key_path = _file(s, "key")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise s.error("key", f"cannot read the private key (unencrypted PEM) of {key_path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise s.error("key", f"{key_path} is not an EC P-256 private key (SHAKEN signs with ES256)")
    x5u = _https_url(s, s.raw("x5u"), "x5u")
    attest = s.choice("attest", ATTEST_DEFAULTS, "B")
    cert_path = _file(s, "cert") if s.has("cert") else None
    if cert_path is not None:
        try:
            leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        except (OSError, ValueError, IndexError) as exc:
            raise s.error("cert", f"cannot read the certificate (PEM) of {cert_path}: {exc}") from None
        if leaf.public_key() != key.public_key():
            raise s.error("cert", f"{cert_path} does not hold the public key of {key_path}")
        if leaf.not_valid_after_utc.timestamp() <= time.time():
            raise s.error("cert", f"{cert_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    return SignSettings(key_path, x5u, attest, cert_path, key)
