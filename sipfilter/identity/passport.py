"""PASSporT (RFC 8225, SHAKEN claims of RFC 8588) as the compact JWS of a SIP Identity header (RFC 8224).

Pure functions over strings and keys: parse the header, decode and check the token, sign and verify ES256.
Only ES256 exists here (no algorithm negotiation, so no algorithm confusion); nothing is fetched.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

from sipfilter.policy.identity import BAD_INFO_RULE, CREDENTIAL_RULE, INVALID_RULE

ALG = "ES256"
PPT = "shaken"
TYP = "passport"
ATTESTATIONS = ("A", "B", "C")
_ECDSA = ec.ECDSA(SHA256())
_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+")
_URL_SAFE = str.maketrans("-_", "+/")
# RFC 8224 §4.1: signed-identity-digest SEMI ident-info *( SEMI ident-info-params ); a value is a <URI>,
# a quoted string (seen for ppt) or a token. Checked whole by _PARAMS, then read by _PARAM.
_P = r'\s*;\s*([A-Za-z0-9_.!%*+`\'~-]+)\s*(?:=\s*(<[^<>]*>|"[^"]*"|[^;\s"<>]+))?\s*'
_PARAM = re.compile(_P)
_PARAMS = re.compile(f"(?:{_P})*")
_VISUAL = str.maketrans("", "", " -.()\t")
_TN = re.compile(r"[0-9*#]{1,32}")
MAX_TOKEN = 4096  # a SHAKEN token is ~500 characters; bounds the work done on a hostile header


class PassportError(ValueError):
    """The Identity header or its PASSporT is unusable; `rule` is the identity.* rule it fails."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IdentityHeader:
    """One Identity header value: the token and the parameters the verifier reads."""

    token: str
    info: str | None  # the URI of `info=<…>`, without the brackets
    alg: str | None
    ppt: str | None  # None: no ppt parameter (the token's own header says)


@dataclass(frozen=True, slots=True)
class Passport:
    """A decoded full-form SHAKEN PASSporT whose claims have the types RFC 8588 requires."""

    x5u: str
    ppt: str
    attest: str
    orig_tn: str
    dest_tns: tuple[str, ...]
    iat: int
    origid: str
    signing_input: bytes  # "header.payload", what the signature covers
    signature: bytes  # r || s, 64 bytes (RFC 7518 §3.4)


def parse_identity(value: str) -> IdentityHeader:
    """Split one Identity header value; PassportError(identity.invalid) when it is not one."""
    text = value.strip()
    cut = text.find(";")
    if cut < 0:
        cut = len(text)
    token = text[:cut].strip()
    if len(token) > MAX_TOKEN or not _JWS.fullmatch(token):
        raise PassportError(INVALID_RULE, "Identity header does not start with a JWS (header.payload.sig)")
    if _PARAMS.fullmatch(text, cut) is None:
        raise PassportError(INVALID_RULE, f"malformed Identity header parameters: {text[cut:cut + 60]!r}")
    params: dict[str, str] = {}
    for name, raw in _PARAM.findall(text, cut):
        params.setdefault(name.lower(), raw[1:-1] if raw.startswith(("<", '"')) else raw)
    return IdentityHeader(token, params.get("info"), params.get("alg"), params.get("ppt"))


def _b64decode(part: str, what: str) -> bytes:
    try:  # strict: a character outside the alphabet is an error, not skipped
        return binascii.a2b_base64((part + "=" * (-len(part) % 4)).translate(_URL_SAFE), strict_mode=True)
    except (binascii.Error, ValueError):
        raise PassportError(INVALID_RULE, f"PASSporT {what} is not base64url") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # RFC 7515 §4: a JWS parser must reject duplicates (or take the last: ambiguous)
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _json_object(part: str, what: str) -> dict[str, Any]:
    try:
        value = _JSON.decode(_b64decode(part, what).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PassportError(INVALID_RULE, f"PASSporT {what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PassportError(INVALID_RULE, f"PASSporT {what} is not a JSON object")
    return value


def decode(token: str) -> Passport:
    """Decode a full-form PASSporT and check its shape (RFC 8225 §4-5, RFC 8588 §4-6); the signature is
    checked by `signature_valid` with the signer's key. PassportError names the rule a failure breaks."""
    parts = token.split(".")
    if len(parts) != 3:
        raise PassportError(INVALID_RULE, "PASSporT is not header.payload.signature")
    head_b64, payload_b64, sig_b64 = parts
    if not payload_b64:
        # RFC 8224 compact form: the claims would be rebuilt from the SIP message, which cannot give
        # SHAKEN's attest and origid (RFC 8588 requires the full form).
        raise PassportError(INVALID_RULE, "compact-form PASSporT: SHAKEN needs the full form")
    ppt, x5u = _header(head_b64)
    claims = _json_object(payload_b64, "payload")
    attest = claims.get("attest")
    if attest not in ATTESTATIONS:
        raise PassportError(INVALID_RULE, f"Invalid PASSporT: attest {attest!r} is not A, B or C")
    orig = claims.get("orig")
    orig_tn = orig.get("tn") if isinstance(orig, dict) else None
    if not isinstance(orig_tn, str):
        raise PassportError(INVALID_RULE, "Invalid PASSporT: orig has no tn")
    dest = claims.get("dest")
    dest_tn = dest.get("tn") if isinstance(dest, dict) else None
    if not isinstance(dest_tn, list) or not dest_tn or not all(isinstance(t, str) for t in dest_tn):
        raise PassportError(INVALID_RULE, "Invalid PASSporT: dest has no tn array")
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int):
        raise PassportError(INVALID_RULE, "Invalid PASSporT: iat is not an integer")
    origid = claims.get("origid")
    if not isinstance(origid, str) or not origid:
        raise PassportError(INVALID_RULE, "Invalid PASSporT: no origid")
    signature = _b64decode(sig_b64, "signature")
    if len(signature) != 64:
        raise PassportError(INVALID_RULE, f"ES256 signature has {len(signature)} bytes, not 64")
    return Passport(x5u, ppt, attest, orig_tn, tuple(dest_tn), iat, origid,
                    f"{head_b64}.{payload_b64}".encode("ascii"), signature)  # fmt: skip


def _check_header(head_b64: str) -> tuple[str, str]:
    header = _json_object(head_b64, "header")
    alg = header.get("alg")
    if alg != ALG:
        raise PassportError(CREDENTIAL_RULE, f"PASSporT alg {alg!r} is not supported (only {ALG})")
    if header.get("typ") != TYP:
        raise PassportError(INVALID_RULE, f"Invalid PASSporT: typ {header.get('typ')!r}, not {TYP!r}")
    ppt = header.get("ppt")
    if not isinstance(ppt, str):
        raise PassportError(INVALID_RULE, "Invalid PASSporT: no ppt in its header")
    x5u = header.get("x5u")
    if not isinstance(x5u, str) or not x5u:
        raise PassportError(INVALID_RULE, "Invalid PASSporT: no x5u in its header")
    if not x5u.lower().startswith("https://"):
        raise PassportError(BAD_INFO_RULE, f"x5u {x5u[:120]!r} is not an https URL")
    return ppt, x5u


# A signer's JWS header is the same on every call it signs: (ppt, x5u) by its base64url text, or the error.
_HEADERS: dict[str, tuple[str, str] | PassportError] = {}


def _header(head_b64: str) -> tuple[str, str]:
    hit = _HEADERS.get(head_b64)
    if hit is None:
        try:
            hit = _check_header(head_b64)
        except PassportError as exc:
            hit = exc
        if len(_HEADERS) >= 256:  # bounded: headers come from the wire
            _HEADERS.clear()
        _HEADERS[head_b64] = hit
    if isinstance(hit, PassportError):
        raise PassportError(hit.rule, hit.reason)
    return hit


def signature_valid(passport: Passport, key: ec.EllipticCurvePublicKey) -> bool:
    r = int.from_bytes(passport.signature[:32], "big")
    s = int.from_bytes(passport.signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), passport.signing_input, _ECDSA)
    except InvalidSignature:
        return False
    return True


def canonical_tn(number: str) -> str:
    """RFC 8224 §8.3 form of a telephone number: no visual separators, no leading '+' ("+33 1 62…" →
    "33162…"); "" when what is left is not a number."""
    tn = number.translate(_VISUAL).removeprefix("+")
    return tn if _TN.fullmatch(tn) else ""


# -- signing --------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def canonical_json(value: dict[str, Any]) -> bytes:
    """RFC 8225 §9: members in lexicographic order, no white space."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


def protected_header(x5u: str) -> str:
    """The base64url JWS header of every SHAKEN PASSporT signed with the certificate at `x5u`."""
    return b64url(canonical_json({"alg": ALG, "ppt": PPT, "typ": TYP, "x5u": x5u}))


def sign(key: ec.EllipticCurvePrivateKey, header_b64: str, orig_tn: str, dest_tn: str, attest: str,
         origid: str, iat: int) -> str:  # fmt: skip
    """A full-form SHAKEN PASSporT: header (from `protected_header`), claims, ES256 signature (r || s)."""
    claims = {"attest": attest, "dest": {"tn": [dest_tn]}, "iat": iat, "orig": {"tn": orig_tn},
              "origid": origid}  # fmt: skip
    signing_input = f"{header_b64}.{b64url(canonical_json(claims))}"
    r, s = decode_dss_signature(key.sign(signing_input.encode("ascii"), _ECDSA))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def identity_value(token: str, x5u: str) -> str:
    """The Identity header value carrying `token` (RFC 8224 §4.1, RFC 8588 §8)."""
    return f"{token};info=<{x5u}>;alg={ALG};ppt={PPT}"
