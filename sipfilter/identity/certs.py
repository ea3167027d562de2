"""STI certificates: the x5u document (leaf first, then intermediates), its chain to the configured roots,
the TNAuthList extension (RFC 8226) and whether it covers a number.

Pure: bytes and certificates in, a Credential or a CredentialError out; fetching is sipfilter/identity/x5u.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from sipfilter.policy.identity import BAD_INFO_RULE, CREDENTIAL_RULE

TN_AUTH_LIST_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26")  # id-pe-TNAuthList (RFC 8226 §9)
MAX_CHAIN = 8


class CredentialError(ValueError):
    """The certificate cannot vouch for a PASSporT; `rule` is identity.bad-info (no usable document) or
    identity.unsupported-credential."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TnAuthList:
    """What a certificate vouches for: service provider codes, number ranges (first, count), numbers."""

    spcs: tuple[str, ...] = ()
    ranges: tuple[tuple[str, int], ...] = ()
    numbers: tuple[str, ...] = ()

    def covers(self, tn: str) -> bool:
        """True when `tn` (canonical digits) is vouched for. A service provider code vouches for the numbers
        its STI-PA assigned to that provider, which the certificate does not list: any number passes."""
        if self.spcs or (not self.ranges and not self.numbers):
            return True
        if tn in self.numbers:
            return True
        if not tn.isdigit():
            return False
        value = int(tn)
        for start, count in self.ranges:
            if len(start) == len(tn) and start.isdigit() and int(start) <= value < int(start) + count:
                return True
        return False


@dataclass(frozen=True, slots=True)
class Credential:
    """A certificate whose chain verified: the key that checks signatures, and when it may be used."""

    key: ec.EllipticCurvePublicKey
    tn_auth: TnAuthList
    valid_from: float  # epoch seconds: the latest notBefore of the chain
    valid_until: float  # the earliest notAfter of the chain
    subject: str


# -- TNAuthList: a few DER rules, enough for RFC 8226's module (EXPLICIT TAGS) ----------------------------


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `pos`."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 3 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _ia5(data: bytes, pos: int, end: int) -> str:
    tag, start, stop = _tlv(data, pos)
    if tag != 0x16 or stop != end:
        raise ValueError("expected an IA5String")
    return data[start:stop].decode("ascii")


def parse_tn_auth_list(der: bytes) -> TnAuthList:
    """TNAuthorizationList ::= SEQUENCE OF TNEntry; TNEntry ::= CHOICE { spc [0] IA5String, range [1]
    SEQUENCE { start IA5String, count INTEGER }, one [2] IA5String }. ValueError when malformed."""
    tag, pos, end = _tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("TNAuthList is not a SEQUENCE")
    spcs: list[str] = []
    ranges: list[tuple[str, int]] = []
    numbers: list[str] = []
    while pos < end:
        tag, start, stop = _tlv(der, pos)
        if tag == 0xA0:
            spcs.append(_ia5(der, start, stop))
        elif tag == 0xA2:
            numbers.append(_ia5(der, start, stop))
        elif tag == 0xA1:
            seq, s_pos, s_end = _tlv(der, start)
            if seq != 0x30 or s_end != stop:
                raise ValueError("TelephoneNumberRange is not a SEQUENCE")
            first_tag, f_start, f_end = _tlv(der, s_pos)
            if first_tag != 0x16:
                raise ValueError("TelephoneNumberRange start is not an IA5String")
            int_tag, i_start, i_end = _tlv(der, f_end)
            if int_tag != 0x02 or i_end != s_end or i_end == i_start:
                raise ValueError("TelephoneNumberRange count is not an INTEGER")
            count = int.from_bytes(der[i_start:i_end], "big", signed=True)
            ranges.append((der[f_start:f_end].decode("ascii"), count))
        else:
            raise ValueError(f"unknown TNEntry tag 0x{tag:02x}")
        pos = stop
    if not (spcs or ranges or numbers):
        raise ValueError("empty TNAuthList")
    return TnAuthList(tuple(spcs), tuple(ranges), tuple(numbers))


# -- documents and chains ---------------------------------------------------------------------------------


def load_document(data: bytes) -> list[x509.Certificate]:
    """The certificates an x5u URL serves: PEM (leaf first, then intermediates) or one DER certificate."""
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CredentialError(BAD_INFO_RULE, f"x5u document is not a certificate: {exc}") from None
    if not certs:
        raise CredentialError(BAD_INFO_RULE, "x5u document holds no certificate")
    return certs[:MAX_CHAIN]


def load_anchors(data: bytes) -> list[x509.Certificate]:
    """The trusted STI roots of a PEM bundle; ValueError when it holds none."""
    certs = x509.load_pem_x509_certificates(data)
    if not certs:
        raise ValueError("no certificate in the bundle")
    return certs


def _not_a_ca(policy: Policy, cert: x509.Certificate, value: x509.BasicConstraints | None) -> None:
    if value is not None and value.ca:
        raise ValueError("the signing certificate is a CA certificate")


def _signs(policy: Policy, cert: x509.Certificate, value: x509.KeyUsage | None) -> None:
    if value is not None and not value.digital_signature:
        raise ValueError("the signing certificate's keyUsage lacks digitalSignature")


# STI end-entity certificates (ATIS-1000080) carry no SAN or EKU: the web-PKI end-entity defaults would
# refuse them. CA certificates keep the web-PKI rules (basicConstraints, keyUsage keyCertSign, …).
_EE_POLICY = (
    ExtensionPolicy.permit_all()
    .may_be_present(x509.BasicConstraints, Criticality.AGNOSTIC, _not_a_ca)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _signs)
)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


def verify_chain(anchors: Store, certs: Sequence[x509.Certificate], at: float) -> Credential:
    """Check the x5u certificates (leaf first) against the trusted roots at time `at`; CredentialError
    (identity.unsupported-credential) says why they cannot vouch for a PASSporT."""
    leaf = certs[0]
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CredentialError(CREDENTIAL_RULE, "the certificate's key is not EC P-256 (ES256)")
    when = dt.datetime.fromtimestamp(at, dt.UTC)
    verifier = (
        PolicyBuilder().store(anchors).time(when).max_chain_depth(MAX_CHAIN)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY).build_client_verifier()
    )  # fmt: skip
    try:
        verified = verifier.verify(leaf, list(certs[1:]))
    except VerificationError as exc:
        raise CredentialError(CREDENTIAL_RULE, f"certificate chain not trusted: {exc}") from None
    try:
        ext = leaf.extensions.get_extension_for_oid(TN_AUTH_LIST_OID).value
    except x509.ExtensionNotFound:
        raise CredentialError(CREDENTIAL_RULE, "the certificate has no TNAuthList (RFC 8226)") from None
    try:
        tn_auth = parse_tn_auth_list(ext.value if isinstance(ext, x509.UnrecognizedExtension) else b"")
    except ValueError as exc:
        raise CredentialError(CREDENTIAL_RULE, f"the certificate's TNAuthList is malformed: {exc}") from None
    chain = verified.chain
    return Credential(
        key, tn_auth,
        max(c.not_valid_before_utc.timestamp() for c in chain),
        min(c.not_valid_after_utc.timestamp() for c in chain),
        leaf.subject.rfc4514_string()[:200],
    )  # fmt: skip
