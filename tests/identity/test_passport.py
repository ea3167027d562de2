"""PASSporT encoding and decoding (RFC 8225, RFC 8588) and the Identity header value (RFC 8224 §4.1)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sipfilter.identity.passport import (
    PassportError,
    b64url,
    canonical_json,
    canonical_tn,
    decode,
    identity_value,
    parse_identity,
    protected_header,
    sign,
    signature_valid,
)

X5U = "https://cert.example.org/sti/leaf.pem"
KEY = ec.generate_private_key(ec.SECP256R1())


def _token(**claims: object) -> str:
    base = {
        "attest": "A",
        "dest": {"tn": ["33612000001"]},
        "iat": 1_780_000_000,
        "orig": {"tn": "33162000001"},
        "origid": "123e4567-e89b-12d3-a456-426655440000",
    }
    base.update(claims)
    return _signed({"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": X5U}, base)


def _signed(header: dict[str, object], claims: dict[str, object]) -> str:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.hazmat.primitives.hashes import SHA256

    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(KEY.sign(signing_input.encode(), ec.ECDSA(SHA256())))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _part(token: str, i: int) -> bytes:
    part = token.split(".")[i]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_signed_passport_is_canonical_json_and_verifies() -> None:
    token = sign(KEY, protected_header(X5U), "33162000001", "33612000001", "A", "orig-1", 1_780_000_000)
    # RFC 8225 §9: members in lexicographic order, no white space.
    assert _part(token, 0) == b'{"alg":"ES256","ppt":"shaken","typ":"passport","x5u":"' + X5U.encode() + b'"}'
    assert _part(token, 1) == (
        b'{"attest":"A","dest":{"tn":["33612000001"]},"iat":1780000000,'
        b'"orig":{"tn":"33162000001"},"origid":"orig-1"}'
    )
    assert "=" not in token and len(_part(token, 2)) == 64  # r || s, base64url without padding
    p = decode(token)
    assert (p.x5u, p.ppt, p.attest, p.orig_tn, p.dest_tns, p.iat, p.origid) == (
        X5U,
        "shaken",
        "A",
        "33162000001",
        ("33612000001",),
        1_780_000_000,
        "orig-1",
    )
    assert signature_valid(p, KEY.public_key())
    assert not signature_valid(p, ec.generate_private_key(ec.SECP256R1()).public_key())


def test_a_tampered_payload_no_longer_verifies() -> None:
    token = _token()
    head, _payload, sig = token.split(".")
    forged = json.loads(_part(token, 1))
    forged["dest"] = {"tn": ["33612999999"]}
    p = decode(f"{head}.{b64url(canonical_json(forged))}.{sig}")
    assert p.dest_tns == ("33612999999",)
    assert not signature_valid(p, KEY.public_key())


def test_identity_value_round_trip() -> None:
    token = _token()
    value = identity_value(token, X5U)
    assert value == f"{token};info=<{X5U}>;alg=ES256;ppt=shaken"
    h = parse_identity(value)
    assert (h.token, h.info, h.alg, h.ppt) == (token, X5U, "ES256", "shaken")
    # Spaces around separators, a quoted ppt (seen in the field), an info URI holding ';'.
    h = parse_identity(f' {token} ;info=<https://a.example/x;v=1> ; alg = ES256 ;ppt="shaken"')
    assert (h.token, h.info, h.alg, h.ppt) == (token, "https://a.example/x;v=1", "ES256", "shaken")
    assert parse_identity(token).info is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not a token",
        "a.b",
        "a.b.c.d",
        "ab$.cd.ef;info=<https://x>",
        "a.b.c;info=<https://x",
        "a.b.c;=x",
        "x" * 5000 + ".a.b",
    ],
)
def test_malformed_identity_headers_are_invalid(value: str) -> None:
    with pytest.raises(PassportError) as err:
        parse_identity(value)
    assert err.value.rule == "identity.invalid"


@pytest.mark.parametrize(
    ("header", "claims", "rule", "text"),
    [
        (
            {"alg": "none", "ppt": "shaken", "typ": "passport", "x5u": X5U},
            {},
            "identity.unsupported-credential",
            "alg",
        ),
        (
            {"alg": "HS256", "ppt": "shaken", "typ": "passport", "x5u": X5U},
            {},
            "identity.unsupported-credential",
            "alg",
        ),
        ({"alg": "ES256", "ppt": "shaken", "typ": "JWT", "x5u": X5U}, {}, "identity.invalid", "typ"),
        ({"alg": "ES256", "ppt": "shaken", "typ": "passport"}, {}, "identity.invalid", "x5u"),
        (
            {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": "http://cert.example/x.pem"},
            {},
            "identity.bad-info",
            "https",
        ),
        (
            {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": X5U},
            {"attest": "D"},
            "identity.invalid",
            "attest",
        ),
        (
            {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": X5U},
            {"orig": {"uri": "sip:a@b"}},
            "identity.invalid",
            "orig",
        ),
        (
            {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": X5U},
            {"dest": {"tn": "33612000001"}},
            "identity.invalid",
            "dest",
        ),
        (
            {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": X5U},
            {"iat": "1780000000"},
            "identity.invalid",
            "iat",
        ),
        (
            {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": X5U},
            {"iat": True},
            "identity.invalid",
            "iat",
        ),
        (
            {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": X5U},
            {"origid": ""},
            "identity.invalid",
            "origid",
        ),
    ],
)
def test_passports_missing_what_shaken_requires(
    header: dict[str, object], claims: dict[str, object], rule: str, text: str
) -> None:
    base = {
        "attest": "A",
        "dest": {"tn": ["33612000001"]},
        "iat": 1_780_000_000,
        "orig": {"tn": "33162000001"},
        "origid": "x",
    }
    base.update(claims)
    with pytest.raises(PassportError) as err:
        decode(_signed(header, base))
    assert err.value.rule == rule and text in err.value.reason


def test_shapes_that_are_not_a_full_passport() -> None:
    token = _token()
    head, payload, sig = token.split(".")
    duplicate = b64url(b'{"a":1,"a":2}')
    for bad, why in (
        (f"{head}..{sig}", "compact"),
        (f"{head}.{payload}.{sig}AAAA", "signature"),
        (f"{head}.{payload}.{sig[:-4]}", "signature"),
        (f"{head}.{payload}.{sig[:-1]}!", "base64url"),
        (f"{b64url(b'[1]')}.{payload}.{sig}", "object"),
        (f"{b64url(b'{')}.{payload}.{sig}", "JSON"),
        (f"{head}.{duplicate}.{sig}", "duplicate"),
    ):
        with pytest.raises(PassportError) as err:
            decode(bad)
        assert err.value.rule == "identity.invalid" and why in err.value.reason, (bad, err.value.reason)


def test_canonical_telephone_numbers() -> None:
    assert canonical_tn("+33162000001") == "33162000001"
    assert canonical_tn("+33 1 62-00.00(01)") == "33162000001"
    assert canonical_tn("*31#") == "*31#"
    assert canonical_tn("alice") == "" and canonical_tn("") == "" and canonical_tn("+") == ""
